/* HASTE's per-image bucketing and merges in one pass (see _haste_native.py, which compiles and loads this).
 *
 * For one image with C input channels of HW pixels each and one hash code per channel:
 *   - group the channels by equal code; buckets are numbered in ascending code order;
 *   - means[b]  = mean of the input rows x[c] of bucket b (the uncentred values);
 *   - merged[b] = sum of the weight rows w[c] of bucket b (the filter slices, R floats per channel).
 * Every sum runs over the channels in ascending order, as PyTorch's embedding_bag does over a stable sort,
 * so the results equal the pure-PyTorch path bit for bit.
 *
 * Plain C99 with no Python or PyTorch headers: it builds in well under a second with any C compiler.
 * Compiled without -ffast-math and with -ffp-contract=off, so each sum keeps IEEE order.
 */
#include <stdint.h>
#include <string.h>

static uint64_t slot_of(int64_t code, uint64_t mask) {
    return ((uint64_t)code * 0x9E3779B97F4A7C15ull) & mask;
}

static void insertion_sort(int64_t *a, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        int64_t v = a[i], j = i - 1;
        while (j >= 0 && a[j] > v) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = v;
    }
}

#define SIGN_BIT 0x8000000000000000ull

static unsigned digit(int64_t v, int shift) { /* byte of the order-preserving unsigned key */
    return (unsigned)((((uint64_t)v ^ SIGN_BIT) >> shift) & 0xFFu);
}

/* Ascending sort of n codes; tmp holds n. Few codes: insertion sort. Many (large L, little merging): an LSD
 * radix sort over the bytes in which the codes differ, O(n) per byte. */
static void sort_ascending(int64_t *a, int64_t *tmp, int64_t n) {
    if (n <= 32) {
        insertion_sort(a, n);
        return;
    }
    uint64_t differ = 0;
    for (int64_t i = 1; i < n; i++) differ |= (uint64_t)a[i] ^ (uint64_t)a[0];
    int64_t *src = a, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        if (((differ >> shift) & 0xFFu) == 0) continue;
        int64_t start[257] = {0};
        for (int64_t i = 0; i < n; i++) start[digit(src[i], shift) + 1]++;
        for (int k = 0; k < 256; k++) start[k + 1] += start[k];
        for (int64_t i = 0; i < n; i++) dst[start[digit(src[i], shift)]++] = src[i];
        int64_t *swap = src;
        src = dst;
        dst = swap;
    }
    if (src != a) memcpy(a, src, (size_t)n * sizeof(int64_t));
}

/* Bucket index of each channel (buckets in ascending code order); returns the number of buckets.
 * table: `mask + 1` slots (a power of two >= 2 C); distinct, sorted and bucket: C slots each. */
static int64_t bucket_channels(const int64_t *codes, int64_t C, int64_t *table, uint64_t mask,
                               int64_t *distinct, int64_t *sorted, int64_t *bucket) {
    int64_t n = 0;
    memset(table, 0, (mask + 1) * sizeof(int64_t));
    for (int64_t c = 0; c < C; c++) { /* the distinct codes, through an open-addressing table */
        uint64_t s = slot_of(codes[c], mask);
        while (table[s] && distinct[table[s] - 1] != codes[c]) s = (s + 1) & mask;
        if (!table[s]) {
            distinct[n++] = codes[c];
            table[s] = n;
        }
    }
    sort_ascending(distinct, sorted, n);
    memset(table, 0, (mask + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) { /* code -> its rank */
        uint64_t s = slot_of(distinct[i], mask);
        while (table[s]) s = (s + 1) & mask;
        table[s] = i + 1;
    }
    for (int64_t c = 0; c < C; c++) {
        uint64_t s = slot_of(codes[c], mask);
        while (distinct[table[s] - 1] != codes[c]) s = (s + 1) & mask;
        bucket[c] = table[s] - 1;
    }
    return n;
}

static void add_row(float *restrict dst, const float *restrict src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* Returns the number of buckets b (means and merged hold b rows), or -1 if `work` is too small.
 * work: int64 scratch of at least haste_work_size(C) entries. */
int64_t haste_merge_image(const int64_t *codes, int64_t C, const float *x, int64_t HW, const float *w,
                          int64_t R, float *means, float *merged, int64_t *work, int64_t work_size) {
    uint64_t cap = 1;
    while (cap < (uint64_t)(2 * C)) cap <<= 1;
    if ((int64_t)cap + 4 * C > work_size) return -1;
    int64_t *table = work, *distinct = work + cap, *sorted = distinct + C, *bucket = sorted + C;
    int64_t *count = bucket + C;
    int64_t b = bucket_channels(codes, C, table, cap - 1, distinct, sorted, bucket);
    memset(means, 0, (size_t)(b * HW) * sizeof(float));
    memset(merged, 0, (size_t)(b * R) * sizeof(float));
    memset(count, 0, (size_t)b * sizeof(int64_t));
    for (int64_t c = 0; c < C; c++) { /* the weight rows stream through once, in memory order */
        int64_t k = bucket[c];
        count[k]++;
        add_row(means + k * HW, x + c * HW, HW);
        add_row(merged + k * R, w + c * R, R);
    }
    for (int64_t k = 0; k < b; k++) {
        float n = (float)count[k];
        float *m = means + k * HW;
        for (int64_t i = 0; i < HW; i++) m[i] /= n;
    }
    return b;
}

int64_t haste_work_size(int64_t C) {
    uint64_t cap = 1;
    while (cap < (uint64_t)(2 * C)) cap <<= 1;
    return (int64_t)cap + 4 * C;
}
