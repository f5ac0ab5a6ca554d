//! Write-ahead log (placeholder; being written).
