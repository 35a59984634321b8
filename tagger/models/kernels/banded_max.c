/* A bf16 matrix product reduced to its maxima while it is computed, on Intel AMX or with AVX512-BF16.
 *
 * musicnn's front end keeps only the max over frequency of each convolution's output. As matrix
 * products (see tagger/musicnn.py, ConvBlock), torch must write every product to memory for the
 * reduction to read it back: on a 2-core Xeon, oneDNN produces about 3e9 bf16 outputs per second and
 * core whatever the product's depth, so the three temporal convolutions, 27.5 million outputs per
 * 30 s window, ran at a fifth of the AMX rate, and the timbral folds added a tenth to a window. Here each
 * block of float32 accumulators is folded into the running maxima as soon as it is complete, from
 * registers or L1, and only the maxima are written.
 *
 *   Z[g, q] = max(Z[g, q], max over rows r of group g and positions p < P of (A @ B)[r, c(q, p)])
 *
 * where the columns come in runs of 16 outputs, position within channel tile:
 * c(q, p) = (q / 16) * 16 * P + 16 * p + q % 16, for q < n / P.
 *
 * A: [rows, k] bf16 with a row stride of lda elements; rows a multiple of 32, k of 32.
 * B: [k / 2, n, 2] bf16, the product's [k, n] weight in the pair-interleaved ("VNNI") layout that both
 *    AMX's tiles and AVX512-BF16's dot products read; n a multiple of 32 and of 16 * P.
 * Z: float32 rows of ldz elements, one row per group of row_group rows (1, or a multiple of 32).
 *
 * Two entry points with that contract: genretag_banded_max (AMX tiles) and genretag_banded_max_avx512
 * (AVX512-BF16 dot products, for CPUs without AMX such as AMD Zen 4/5). Built by tagger/native.py with
 * the host's C compiler, once per version with only that version's flags: the AMX part is compiled only
 * where the compiler is given -mamx-tile (gcc 11 and later know it), so an older compiler still builds
 * the AVX512 one. Each is called only where the CPU has its instructions.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands a process AMX's tile state only on request; 0 when granted. */
int genretag_amx_enable(void) {
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

#ifdef __AMX_TILE__
typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Eight 16-row x 64-byte tiles: accumulators 0-3, A tiles 4-5, B tiles 6-7. */
static void configure_tiles(void) {
    tile_config config;
    memset(&config, 0, sizeof config);
    config.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* Fold two finished 16 x 16 accumulator tiles of one row tile, two positions of one channel tile, into
 * Z (row groups of 1): one read and write of Z for both. */
static inline void fold_pair(const float *first, const float *second, int64_t row0, int64_t column_tile,
                             int64_t positions, float *z, int64_t ldz) {
    const int64_t column = (column_tile / positions) * 16;
    for (int i = 0; i < 16; i++) {
        float *out = z + (row0 + i) * ldz + column;
        __m512 high = _mm512_max_ps(_mm512_load_ps(first + 16 * i), _mm512_load_ps(second + 16 * i));
        _mm512_storeu_ps(out, _mm512_max_ps(_mm512_loadu_ps(out), high));
    }
}

/* Fold a finished 16 x 16 accumulator tile into Z. */
static inline void fold_tile(const float *tile, int64_t row0, int64_t column_tile, int64_t positions,
                             int64_t row_group, float *z, int64_t ldz) {
    const int64_t column = (column_tile / positions) * 16;
    if (row_group == 1) {
        for (int i = 0; i < 16; i++) {
            float *out = z + (row0 + i) * ldz + column;
            _mm512_storeu_ps(out, _mm512_max_ps(_mm512_loadu_ps(out), _mm512_load_ps(tile + 16 * i)));
        }
        return;
    }
    __m512 high = _mm512_load_ps(tile);
    for (int i = 1; i < 16; i++)
        high = _mm512_max_ps(high, _mm512_load_ps(tile + 16 * i));
    float *out = z + (row0 / row_group) * ldz + column;
    _mm512_storeu_ps(out, _mm512_max_ps(_mm512_loadu_ps(out), high));
}

void genretag_banded_max(const uint16_t *a, int64_t lda, int64_t rows, const uint16_t *b, int64_t k,
                         int64_t n, int64_t positions, int64_t row_group, float *z, int64_t ldz) {
    float tiles[4][256] __attribute__((aligned(64)));
    const int64_t n_tiles = n / 16, chunks = k / 32;
    const int64_t a_bytes = lda * 2, b_bytes = n * 4;
    configure_tiles();
    for (int64_t r = 0; r < rows; r += 32) {
        const uint16_t *a0 = a + r * lda, *a1 = a0 + 16 * lda;
        for (int64_t j = 0; j < n_tiles; j += 2) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t c = 0; c < chunks; c++) {
                /* chunk c covers k rows 32c..32c+31, i.e. pair rows 16c..16c+15 of B */
                const uint16_t *bc = b + c * 16 * n * 2 + j * 32;
                _tile_loadd(4, a0 + c * 32, a_bytes);
                _tile_loadd(5, a1 + c * 32, a_bytes);
                _tile_loadd(6, bc, b_bytes);
                _tile_loadd(7, bc + 32, b_bytes);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, tiles[0], 64);
            _tile_stored(1, tiles[1], 64);
            _tile_stored(2, tiles[2], 64);
            _tile_stored(3, tiles[3], 64);
            if (row_group == 1 && positions % 2 == 0) {  /* j is even: j + 1 is the same channel tile */
                fold_pair(tiles[0], tiles[1], r, j, positions, z, ldz);
                fold_pair(tiles[2], tiles[3], r + 16, j, positions, z, ldz);
            } else {
                fold_tile(tiles[0], r, j, positions, row_group, z, ldz);
                fold_tile(tiles[1], r, j + 1, positions, row_group, z, ldz);
                fold_tile(tiles[2], r + 16, j, positions, row_group, z, ldz);
                fold_tile(tiles[3], r + 16, j + 1, positions, row_group, z, ldz);
            }
        }
    }
    _tile_release();
}
#endif /* __AMX_TILE__ */

/* ---- AVX512-BF16 ------------------------------------------------------------------------------ */

#define AVX_ROWS 8        /* rows of A per block: 8 x 2 accumulators of 16 floats */
#define AVX_ROW_CHUNK 64  /* rows swept per column strip, so that the strip of B stays in L1 */

static inline void fold_vector(float *out, __m512 high) {
    _mm512_storeu_ps(out, _mm512_max_ps(_mm512_loadu_ps(out), high));
}

static inline __m512 max_of_rows(const __m512 *acc) {
    __m512 high = acc[0];
    for (int i = 1; i < AVX_ROWS; i++)
        high = _mm512_max_ps(high, acc[i]);
    return high;
}

/* Rows r..r+7 of A against the 32 columns of B that start at column tile j, folded into Z. */
static inline __attribute__((always_inline)) void avx512_block(const uint16_t *a, int64_t lda, int64_t r, const uint16_t *b_strip,
                                int64_t pairs, int64_t n, int64_t column0, int64_t column1,
                                int64_t row_group, float *z, int64_t ldz) {
    __m512 acc0[AVX_ROWS], acc1[AVX_ROWS];
    for (int i = 0; i < AVX_ROWS; i++)
        acc0[i] = acc1[i] = _mm512_setzero_ps();
    const uint16_t *rows = a + r * lda;
    for (int64_t p = 0; p < pairs; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b_strip + p * n * 2);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b_strip + p * n * 2 + 32);
        for (int i = 0; i < AVX_ROWS; i++) {
            int32_t pair;
            memcpy(&pair, rows + i * lda + 2 * p, sizeof pair);
            const __m512bh a_pair = (__m512bh)_mm512_set1_epi32(pair);
            acc0[i] = _mm512_dpbf16_ps(acc0[i], a_pair, b0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], a_pair, b1);
        }
    }
    if (row_group != 1) {  /* all 8 rows are in one group: row_group is a multiple of 32 */
        float *out = z + (r / row_group) * ldz;
        fold_vector(out + column0, max_of_rows(acc0));
        fold_vector(out + column1, max_of_rows(acc1));
    } else if (column0 == column1) {  /* two positions of one channel tile: one read and write of Z */
        for (int i = 0; i < AVX_ROWS; i++)
            fold_vector(z + (r + i) * ldz + column0, _mm512_max_ps(acc0[i], acc1[i]));
    } else {
        for (int i = 0; i < AVX_ROWS; i++) {
            fold_vector(z + (r + i) * ldz + column0, acc0[i]);
            fold_vector(z + (r + i) * ldz + column1, acc1[i]);
        }
    }
}

void genretag_banded_max_avx512(const uint16_t *a, int64_t lda, int64_t rows, const uint16_t *b, int64_t k,
                                int64_t n, int64_t positions, int64_t row_group, float *z, int64_t ldz) {
    const int64_t pairs = k / 2, n_tiles = n / 16;
    for (int64_t r0 = 0; r0 < rows; r0 += AVX_ROW_CHUNK) {
        const int64_t r_end = r0 + AVX_ROW_CHUNK < rows ? r0 + AVX_ROW_CHUNK : rows;
        for (int64_t j = 0; j < n_tiles; j += 2) {
            const int64_t column0 = (j / positions) * 16, column1 = ((j + 1) / positions) * 16;
            for (int64_t r = r0; r < r_end; r += AVX_ROWS)
                avx512_block(a, lda, r, b + j * 32, pairs, n, column0, column1, row_group, z, ldz);
        }
    }
}
