/*
 * A pass-through transform in C: every record is delivered unchanged, with no partition keys.
 * It is the fast path of spillway's transform benchmark: it shows what the host boundary costs.
 *
 * Freestanding (no libc, no WASI imports): the canonical ABI of wit/transform.wit is written out
 * by hand below, so the only tools needed are clang and wasm-ld (Debian's clang and lld).
 *
 *   process: func(batch: list<input-record>) -> list<outcome>
 *
 * Memory comes from a bump allocator that the host resets after each call (cabi_post_process),
 * so a call costs no frees at all.
 */
#include <stddef.h>
#include <stdint.h>

/* list<u8> and string: pointer and length, 8 bytes, align 4. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} slice_t;

/* record input-record { id: string, data: list<u8>, arrival-ms: u64 }: 24 bytes, align 8. */
typedef struct {
    slice_t id;
    slice_t data;
    uint64_t arrival_ms;
} input_record_t;

/* variant outcome { ok(transformed), dropped, failed(string) }: a u8 tag, then the payload at
 * offset 4; transformed is { data: list<u8>, partition-keys: list<tuple<string,string>> }. */
enum { OUTCOME_OK = 0, OUTCOME_DROPPED = 1, OUTCOME_FAILED = 2 };
typedef struct {
    uint8_t tag;
    slice_t data;
    slice_t partition_keys;
} outcome_t;

_Static_assert(sizeof(input_record_t) == 24, "input-record layout");
_Static_assert(sizeof(outcome_t) == 20, "outcome layout");

extern unsigned char __heap_base;
static uintptr_t heap_top;

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    if (old != NULL) {
        __builtin_trap(); /* the host only ever asks for fresh blocks */
    }
    if (heap_top == 0) {
        heap_top = (uintptr_t)&__heap_base;
    }
    uintptr_t start = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = start + new_size;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) {
            __builtin_trap();
        }
    }
    heap_top = end;
    return (void *)start;
}

static slice_t result_area;

__attribute__((export_name("process")))
slice_t *process(const input_record_t *batch, size_t count) {
    outcome_t *out = cabi_realloc(NULL, 0, 4, count * sizeof(outcome_t));
    for (size_t i = 0; i < count; i++) {
        out[i].tag = OUTCOME_OK;
        out[i].data = batch[i].data; /* the input bytes, not a copy */
        out[i].partition_keys.ptr = (const uint8_t *)4; /* empty list: any aligned pointer */
        out[i].partition_keys.len = 0;
    }
    result_area.ptr = (const uint8_t *)out;
    result_area.len = count;
    return &result_area;
}

/* Called by the host once it has read the result: everything allocated is garbage now. */
__attribute__((export_name("cabi_post_process")))
void cabi_post_process(slice_t *result) {
    (void)result;
    heap_top = (uintptr_t)&__heap_base;
}
