//! Control plane: `CreateDeliveryStream`, `DescribeDeliveryStream`, `ListDeliveryStreams`,
//! `DeleteDeliveryStream`, `UpdateDestination`, the tag operations and the stream encryption
//! switch, in Firehose's JSON shapes.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::Grant;
use super::error::{ApiError, from_json_error};
use crate::catalog::{Catalog, DESTINATION_ID, DestinationShape, StreamEntry};
use crate::definition::tags::Tag;
use crate::definition::{S3Destination, StreamEncryption, iceberg};

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| from_json_error(&e))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateIn {
    delivery_stream_name: String,
    delivery_stream_type: Option<String>,
    extended_s3_destination_configuration: Option<S3Destination>,
    #[serde(rename = "S3DestinationConfiguration")]
    s3_destination_configuration: Option<S3Destination>,
    iceberg_destination_configuration: Option<Map<String, Value>>,
    tags: Option<Vec<Tag>>,
    delivery_stream_encryption_configuration_input: Option<StreamEncryption>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A `CreateDeliveryStream` request as read from its body; the catalog validates the rest.
pub(crate) struct CreateRequest {
    pub name: String,
    pub shape: DestinationShape,
    pub destination: S3Destination,
    pub tags: Vec<Tag>,
    pub encryption: Option<StreamEncryption>,
}

pub async fn create(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let CreateRequest {
        name,
        shape,
        destination,
        tags,
        encryption,
    } = read_create(body, grant)?;
    catalog
        .create(&name, shape, destination, tags, encryption)
        .await?;
    Ok(json!({ "DeliveryStreamARN": catalog.arn(&name) })
        .to_string()
        .into_bytes())
}

/// Reads a `CreateDeliveryStream` body: everything before the catalog.
pub(crate) fn read_create(body: &[u8], grant: &Grant<'_>) -> Result<CreateRequest, ApiError> {
    let input: CreateIn = parse(body)?;
    grant.stream("CreateDeliveryStream", &input.delivery_stream_name)?;
    match input.delivery_stream_type.as_deref() {
        None | Some("DirectPut") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "DeliveryStreamType {other} is not supported; spillway accepts DirectPut streams only."
            )));
        }
    }
    if let Some(key) = input
        .other
        .iter()
        .find(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
    {
        return Err(ApiError::invalid(format!(
            "{key} is not supported; spillway delivers to S3 destinations only (ExtendedS3DestinationConfiguration or S3DestinationConfiguration)."
        )));
    }
    let (shape, destination) = match (
        input.extended_s3_destination_configuration,
        input.s3_destination_configuration,
        input.iceberg_destination_configuration,
    ) {
        (Some(d), None, None) => (DestinationShape::ExtendedS3, d),
        (None, Some(d), None) => (DestinationShape::S3, d),
        (None, None, Some(d)) => {
            let s3 = iceberg::to_s3_destination(d)
                .map_err(|m| ApiError::invalid(format!("IcebergDestinationConfiguration: {m}")))?;
            (DestinationShape::Iceberg, parse(s3.to_string().as_bytes())?)
        }
        (None, None, None) => {
            return Err(ApiError::invalid(
                "ExtendedS3DestinationConfiguration (or S3DestinationConfiguration, or IcebergDestinationConfiguration) is required.",
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "Give only one of ExtendedS3DestinationConfiguration, S3DestinationConfiguration and IcebergDestinationConfiguration.",
            ));
        }
    };
    if shape != DestinationShape::Iceberg && destination.other.contains_key(iceberg::ICEBERG_MEMBER)
    {
        return Err(ApiError::invalid(format!(
            "{} is a destination of its own, not a member of an S3 destination.",
            iceberg::ICEBERG_MEMBER
        )));
    }
    Ok(CreateRequest {
        name: input.delivery_stream_name,
        shape,
        destination,
        tags: input.tags.unwrap_or_default(),
        encryption: input.delivery_stream_encryption_configuration_input,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameIn {
    delivery_stream_name: String,
}

pub fn describe(catalog: &Catalog, body: &[u8], grant: &Grant<'_>) -> Result<Vec<u8>, ApiError> {
    let input: NameIn = parse(body)?;
    grant.stream("DescribeDeliveryStream", &input.delivery_stream_name)?;
    let entry = catalog.get(&input.delivery_stream_name)?;
    Ok(
        json!({ "DeliveryStreamDescription": description(catalog, &entry) })
            .to_string()
            .into_bytes(),
    )
}

fn description(catalog: &Catalog, entry: &StreamEntry) -> Value {
    let record = entry.record();
    // The settings as accepted, with spillway's defaults filled in (buffering, compression).
    let definition = entry.runtime.definition();
    let raw = &definition.destination.raw;
    let mut extended = json!({
        "RoleARN": "",
        "Prefix": "",
        "ErrorOutputPrefix": "",
        "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
        "CloudWatchLoggingOptions": { "Enabled": false },
        "S3BackupMode": "Disabled",
    });
    if let (Some(map), Ok(Value::Object(given))) =
        (extended.as_object_mut(), serde_json::to_value(raw))
    {
        map.extend(given);
        // Given as `S3BackupConfiguration`, described as `S3BackupDescription`, with the
        // backup's defaults filled in as Firehose does.
        if let Some(Value::Object(backup)) = map.remove("S3BackupConfiguration") {
            let mut described = json!({
                "RoleARN": "",
                "Prefix": "",
                "BufferingHints": { "SizeInMBs": 5, "IntervalInSeconds": 300 },
                "CompressionFormat": "UNCOMPRESSED",
                "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
            });
            if let Some(d) = described.as_object_mut() {
                for (k, v) in backup {
                    match (d.get_mut(&k), v) {
                        // A hint left out keeps its default (`SizeInMBs` alone is described
                        // with the default `IntervalInSeconds`).
                        (Some(Value::Object(hints)), Value::Object(given))
                            if k == "BufferingHints" =>
                        {
                            hints.extend(given)
                        }
                        (_, v) => {
                            d.insert(k, v);
                        }
                    }
                }
            }
            map.insert("S3BackupDescription".into(), described);
        }
    }
    // The older shape holds the plain S3 settings only; Firehose gives it for an extended
    // destination too, and older clients read it.
    let mut s3 = Map::new();
    for key in [
        "RoleARN",
        "BucketARN",
        "Prefix",
        "ErrorOutputPrefix",
        "BufferingHints",
        "CompressionFormat",
        "EncryptionConfiguration",
    ] {
        if let Some(v) = extended.get(key) {
            s3.insert(key.into(), v.clone());
        }
    }
    let mut destination = json!({ "DestinationId": DESTINATION_ID });
    if record.shape == DestinationShape::Iceberg {
        destination["IcebergDestinationDescription"] = iceberg_description(extended, s3);
        return stream_description(catalog, &record, destination);
    }
    if record.shape == DestinationShape::ExtendedS3 {
        destination["ExtendedS3DestinationDescription"] = extended;
    }
    destination["S3DestinationDescription"] = Value::Object(s3);
    stream_description(catalog, &record, destination)
}

/// An Iceberg destination as Firehose describes it: its own members, the shared ones, and
/// `S3DestinationDescription` for the error output.
fn iceberg_description(mut given: Value, s3: Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(own)) = given
        .as_object_mut()
        .and_then(|m| m.remove(iceberg::ICEBERG_MEMBER))
    {
        out.extend(own);
    }
    for key in [
        "RoleARN",
        "BufferingHints",
        "ProcessingConfiguration",
        "CloudWatchLoggingOptions",
    ] {
        if let Some(v) = given.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.entry("ProcessingConfiguration")
        .or_insert_with(|| json!({ "Enabled": false }));
    out.insert("S3DestinationDescription".into(), Value::Object(s3));
    Value::Object(out)
}

fn stream_description(
    catalog: &Catalog,
    record: &crate::catalog::StreamRecord,
    destination: Value,
) -> Value {
    let encryption = match &record.encryption {
        Some(e) => {
            let mut v = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
            v["Status"] = json!("ENABLED");
            v
        }
        None => json!({ "Status": "DISABLED" }),
    };
    json!({
        "DeliveryStreamName": record.name,
        "DeliveryStreamARN": catalog.arn(&record.name),
        "DeliveryStreamStatus": "ACTIVE",
        "DeliveryStreamType": "DirectPut",
        "DeliveryStreamEncryptionConfiguration": encryption,
        "VersionId": record.version.to_string(),
        "CreateTimestamp": record.created_ms as f64 / 1000.0,
        "LastUpdateTimestamp": record.updated_ms as f64 / 1000.0,
        "Destinations": [destination],
        "HasMoreDestinations": false,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ListIn {
    limit: Option<i64>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

pub fn list(catalog: &Catalog, body: &[u8], grant: &Grant<'_>) -> Result<Vec<u8>, ApiError> {
    grant.class("ListDeliveryStreams")?;
    let input: ListIn = if body.iter().all(u8::is_ascii_whitespace) {
        ListIn::default()
    } else {
        parse(body)?
    };
    let limit = input.limit.unwrap_or(10);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and 10000, got {limit}."
        )));
    }
    let names: Vec<String> = match input.delivery_stream_type.as_deref() {
        None | Some("DirectPut") => catalog
            .list()
            .into_iter()
            .map(|e| e.name.to_string())
            // A key limited to some streams sees only those.
            .filter(|n| grant.may_see(n))
            .filter(|n| match &input.exclusive_start_delivery_stream_name {
                Some(start) => n.as_str() > start.as_str(),
                None => true,
            })
            .collect(),
        Some(_) => Vec::new(),
    };
    let more = names.len() > limit as usize;
    let page: Vec<_> = names.into_iter().take(limit as usize).collect();
    Ok(
        json!({ "DeliveryStreamNames": page, "HasMoreDeliveryStreams": more })
            .to_string()
            .into_bytes(),
    )
}

pub async fn delete(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let input: NameIn = parse(body)?;
    grant.stream("DeleteDeliveryStream", &input.delivery_stream_name)?;
    catalog.delete(&input.delivery_stream_name).await?;
    Ok(b"{}".to_vec())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateIn {
    delivery_stream_name: String,
    current_delivery_stream_version_id: String,
    destination_id: String,
    extended_s3_destination_update: Option<S3Destination>,
    #[serde(rename = "S3DestinationUpdate")]
    s3_destination_update: Option<S3Destination>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// An `UpdateDestination` request as read from its body; the catalog checks it against the
/// stream and validates the merged destination.
pub(crate) struct UpdateRequest {
    pub name: String,
    pub current_version: String,
    pub destination_id: String,
    pub update: S3Destination,
}

pub async fn update(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let UpdateRequest {
        name,
        current_version,
        destination_id,
        update,
    } = read_update(body, grant)?;
    catalog
        .update(&name, &current_version, &destination_id, update)
        .await?;
    Ok(b"{}".to_vec())
}

/// Reads an `UpdateDestination` body: everything before the catalog.
pub(crate) fn read_update(body: &[u8], grant: &Grant<'_>) -> Result<UpdateRequest, ApiError> {
    let input: UpdateIn = parse(body)?;
    grant.stream("UpdateDestination", &input.delivery_stream_name)?;
    if let Some(key) = input
        .other
        .iter()
        .find(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
    {
        return Err(ApiError::invalid(format!(
            "{key} is not supported; spillway updates S3 destinations only."
        )));
    }
    let update = match (
        input.extended_s3_destination_update,
        input.s3_destination_update,
    ) {
        (Some(u), None) | (None, Some(u)) => u,
        (None, None) => {
            return Err(ApiError::invalid(
                "ExtendedS3DestinationUpdate (or S3DestinationUpdate) is required.",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Give only one of ExtendedS3DestinationUpdate and S3DestinationUpdate.",
            ));
        }
    };
    Ok(UpdateRequest {
        name: input.delivery_stream_name,
        current_version: input.current_delivery_stream_version_id,
        destination_id: input.destination_id,
        update,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagIn {
    delivery_stream_name: String,
    tags: Vec<Tag>,
}

pub async fn tag(catalog: &Catalog, body: &[u8], grant: &Grant<'_>) -> Result<Vec<u8>, ApiError> {
    let input: TagIn = parse(body)?;
    grant.stream("TagDeliveryStream", &input.delivery_stream_name)?;
    catalog.tag(&input.delivery_stream_name, input.tags).await?;
    Ok(b"{}".to_vec())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagIn {
    delivery_stream_name: String,
    tag_keys: Vec<String>,
}

pub async fn untag(catalog: &Catalog, body: &[u8], grant: &Grant<'_>) -> Result<Vec<u8>, ApiError> {
    let input: UntagIn = parse(body)?;
    grant.stream("UntagDeliveryStream", &input.delivery_stream_name)?;
    catalog
        .untag(&input.delivery_stream_name, input.tag_keys)
        .await?;
    Ok(b"{}".to_vec())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsIn {
    delivery_stream_name: String,
    exclusive_start_tag_key: Option<String>,
    limit: Option<i64>,
}

/// `ListTagsForDeliveryStream`: tags in key order, `Limit` (1-50, default 50) at a time.
pub fn list_tags(catalog: &Catalog, body: &[u8], grant: &Grant<'_>) -> Result<Vec<u8>, ApiError> {
    let input: ListTagsIn = parse(body)?;
    grant.stream("ListTagsForDeliveryStream", &input.delivery_stream_name)?;
    let max = crate::definition::tags::MAX_TAGS as i64;
    let limit = input.limit.unwrap_or(max);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and {max}, got {limit}."
        )));
    }
    let record = catalog.get(&input.delivery_stream_name)?.record();
    let after: Vec<&Tag> = record
        .tags
        .iter()
        .filter(|t| match &input.exclusive_start_tag_key {
            Some(start) => t.key.as_str() > start.as_str(),
            None => true,
        })
        .collect();
    let more = after.len() > limit as usize;
    let page: Vec<&Tag> = after.into_iter().take(limit as usize).collect();
    Ok(json!({ "Tags": page, "HasMoreTags": more })
        .to_string()
        .into_bytes())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartEncryptionIn {
    delivery_stream_name: String,
    delivery_stream_encryption_configuration_input: Option<StreamEncryption>,
}

/// `StartDeliveryStreamEncryption`: without a configuration, an AWS-owned key, as in Firehose.
pub async fn start_encryption(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let input: StartEncryptionIn = parse(body)?;
    grant.stream("StartDeliveryStreamEncryption", &input.delivery_stream_name)?;
    let encryption = input
        .delivery_stream_encryption_configuration_input
        .unwrap_or(StreamEncryption {
            key_type: "AWS_OWNED_CMK".into(),
            key_arn: None,
        });
    catalog
        .set_encryption(&input.delivery_stream_name, Some(encryption))
        .await?;
    Ok(b"{}".to_vec())
}

pub async fn stop_encryption(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let input: NameIn = parse(body)?;
    grant.stream("StopDeliveryStreamEncryption", &input.delivery_stream_name)?;
    catalog
        .set_encryption(&input.delivery_stream_name, None)
        .await?;
    Ok(b"{}".to_vec())
}
