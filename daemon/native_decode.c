/* One decode step of each model in plain C: what daemon/transformer.py and daemon/lstm.py
 * decode_step() compute, without a torch call per op.
 *
 * Why it exists: a decode step is ~30 tiny matrix-vector products and ~200 small ops, and each
 * torch call costs microseconds of dispatch before doing any work (bench/decode.py prints the
 * two steps side by side). Here the whole step is one call from Python.
 *
 * The weights come as one table of pointers in the order of the model's DECODE_LAYOUT; the
 * offsets (TRANSFORMER_*, LSTM_*), the dims structs and the formats are native_layout.h,
 * generated from that layout by daemon/native.py at build time.
 *
 * Built on the machine that runs it (daemon/native.py: cc -O3 -march=native), x86-64 with
 * AVX2, FMA and F16C only; anything else falls back to the torch step.
 * Weights are fp32, fp16 or int8 (one scale per row) row-major [out, in] matrices;
 * everything else is fp32 (the Transformer's cache: fp16 unless the weights are fp32).
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "native_layout.h"

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "native decode needs AVX2, FMA and F16C"
#endif

#define ABI_VERSION 5

int antiphon_native_abi(void) { return ABI_VERSION; }

/* exp on 8 lanes (Cephes polynomial, relative error ~2e-7 on [-88, 88]). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365f)), _mm256_set1_ps(88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

static inline __m256 sigmoid8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static inline __m256 tanh8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), sigmoid8(_mm256_add_ps(x, x))), one);
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

/* Weight formats (FORMAT_*): fp32, fp16, or int8 with one fp32 scale per output row. */
static inline __m256 load_weights8(const void *w, int format, size_t index) {
    if (format == FORMAT_FP16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + index)));
    return _mm256_loadu_ps((const float *)w + index);
}

/* Eight, or one, values of an fp16 (half) or fp32 array, as fp32. */
static inline __m256 load8(const void *p, int half, size_t index) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + index)));
    return _mm256_loadu_ps((const float *)p + index);
}

static inline float load1(const void *p, int half, size_t index) {
    return half ? _cvtsh_ss(((const uint16_t *)p)[index]) : ((const float *)p)[index];
}

static inline void store1(void *p, int half, size_t index, float value) {
    if (half) ((uint16_t *)p)[index] = _cvtss_sh(value, 0);
    else ((float *)p)[index] = value;
}

/* MAX_WIDTH, the largest input width of a linear (native.py checks it): the int8 path's
 * quantised row and its int32 sums (at most 127 * 4095 * 2 per pair, MAX_WIDTH / 8 pairs per
 * lane) fit. */

static inline __m128 sum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* int8 rows (one scale each) times x quantised to 13 bits (one scale): integer multiply-adds,
 * 16 weights per instruction, about twice the rate of converting each weight to float. x's
 * rounding (relative 1/8190 of its largest element) is far below the weights' own. */
static void gemv_int8(const int8_t *w, const float *scale, const float *b, const float *x, float *y, int n, int k) {
    int16_t quantised[MAX_WIDTH];
    float peak = 0.0f;
    for (int i = 0; i < k; i++) peak = fabsf(x[i]) > peak ? fabsf(x[i]) : peak;
    const float step = peak > 0.0f ? peak / 4095.0f : 1.0f;
    for (int i = 0; i < k; i++) quantised[i] = (int16_t)lrintf(x[i] / step);
    const int whole = k & ~15;
    int row = 0;
    for (; row < n; row += 4) {
        const int rows = n - row < 4 ? n - row : 4;
        __m256 sums[4];
        for (int r = 0; r < rows; r++) {
            const int8_t *weights = w + (size_t)(row + r) * k;
            __m256i acc = _mm256_setzero_si256();
            for (int i = 0; i < whole; i += 16) {
                __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(weights + i)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(wv, _mm256_loadu_si256((const __m256i *)(quantised + i))));
            }
            int tail = 0;
            for (int i = whole; i < k; i++) tail += weights[i] * quantised[i];
            sums[r] = _mm256_cvtepi32_ps(_mm256_add_epi32(acc, _mm256_setr_epi32(tail, 0, 0, 0, 0, 0, 0, 0)));
        }
        for (int r = rows; r < 4; r++) sums[r] = _mm256_setzero_ps();
        float out[4];
        _mm_storeu_ps(out, sum4x8(sums[0], sums[1], sums[2], sums[3]));
        for (int r = 0; r < rows; r++) y[row + r] = b[row + r] + out[r] * scale[row + r] * step;
    }
}

/* y = W x + b (W [n, k], k a multiple of 8), four rows at a time so each load of x serves four.
 * `linear` points at a Linear's LINEAR_* entries. */
static void gemv(const void *const *linear, int format, const float *x, float *y, int n, int k) {
    const void *w = linear[LINEAR_WEIGHT];
    const float *b = linear[LINEAR_BIAS];
    if (format == FORMAT_INT8) {
        gemv_int8(w, linear[LINEAR_SCALE], b, x, y, n, k);
        return;
    }
    int row = 0;
    for (; row + 4 <= n; row += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t r0 = (size_t)row * k, r1 = r0 + k, r2 = r1 + k, r3 = r2 + k;
        for (int i = 0; i < k; i += 8) {
            __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(load_weights8(w, format, r0 + i), xv, a0);
            a1 = _mm256_fmadd_ps(load_weights8(w, format, r1 + i), xv, a1);
            a2 = _mm256_fmadd_ps(load_weights8(w, format, r2 + i), xv, a2);
            a3 = _mm256_fmadd_ps(load_weights8(w, format, r3 + i), xv, a3);
        }
        _mm_storeu_ps(y + row, _mm_add_ps(sum4x8(a0, a1, a2, a3), _mm_loadu_ps(b + row)));
    }
    for (; row < n; row++) {
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < k; i += 8) a = _mm256_fmadd_ps(load_weights8(w, format, (size_t)row * k + i), _mm256_loadu_ps(x + i), a);
        y[row] = b[row] + sum8(a);
    }
}

/* x = LayerNorm(x + residual) (eps 1e-5, as torch.nn.LayerNorm); n a multiple of 8. */
static void add_layer_norm(float *x, const float *residual, const float *weight, const float *bias, int n) {
    __m256 total = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        __m256 v = residual ? _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(residual + i)) : _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(x + i, v);
        total = _mm256_add_ps(total, v);
    }
    __m256 mean = _mm256_set1_ps(sum8(total) / n);
    __m256 squares = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mean);
        squares = _mm256_fmadd_ps(d, d, squares);
    }
    __m256 scale = _mm256_set1_ps(1.0f / sqrtf(sum8(squares) / n + 1e-5f));
    for (int i = 0; i < n; i += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mean), scale);
        _mm256_storeu_ps(x + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(weight + i), _mm256_loadu_ps(bias + i)));
    }
}

static void relu(float *x, int n) {
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(x + i, _mm256_max_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps()));
}

/* ---- Transformer ----------------------------------------------------------------------- */

/* Scratch floats the Transformer step needs (Python allocates them). */
int transformer_scratch_size(const struct transformer_dims *dims) {
    return 6 * dims->d_model + dims->d_ff + (dims->num_heads + 1) * dims->context;
}

/* One token through every layer, appending its key/value at `slot` of the ring cache.
 * keys is [layers, heads, head_dim, context] (transposed: scores vectorise over slots),
 * values [layers, heads, context, head_dim], both fp16 when the weights are (at a full context
 * the cache is a third of the bytes a step reads). Slots 0..used-1 are attended; each slot's relative
 * embedding is row first + s of the layer's rotated table, stored transposed
 * [head_dim, 2 * context] (see rotated_relative in transformer.py). Query rows of the QKV
 * matrix come pre-scaled by 1/sqrt(head_dim). RealFormer: scores accumulate across layers. */
void transformer_step(const struct transformer_dims *dims, const void *const *weights, void *keys, void *values,
                      float *scratch, int token, int slot, int used, float *logits) {
    const int width = dims->d_model, heads = dims->num_heads, head_dim = dims->head_dim;
    const int d_ff = dims->d_ff, context = dims->context, format = dims->format;
    const int half = format != FORMAT_FP32;  /* the cache's precision */
    const size_t layer_size = (size_t)heads * head_dim * context * (half ? 2 : 4);  /* bytes per layer */
    const int first = context - 1 - slot;
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  /* flush denormals to zero */
    float *x = scratch, *qkv = x + width, *attended = qkv + 3 * width, *out = attended + width;
    float *hidden = out + width, *scores = hidden + d_ff, *probabilities = scores + heads * context;
    const float *embed = (const float *)weights[TRANSFORMER_EMBED] + (size_t)token * width;
    for (int i = 0; i < width; i++) x[i] = embed[i];
    for (int i = 0; i < heads * context; i++) scores[i] = 0.0f;

    for (int layer = 0; layer < dims->num_layers; layer++) {
        const void *const *w = weights + TRANSFORMER_MODEL_ENTRIES + layer * TRANSFORMER_LAYER_ENTRIES;
        const float *relative = (const float *)w[TRANSFORMER_LAYER_RELATIVE];
        void *layer_keys = (char *)keys + layer * layer_size, *layer_values = (char *)values + layer * layer_size;
        gemv(w + TRANSFORMER_LAYER_QKV, format, x, qkv, 3 * width, width);
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + h * head_dim, *k = qkv + width + h * head_dim, *v = qkv + 2 * width + h * head_dim;
            const size_t head_offset = (size_t)h * head_dim * context;  /* of keys and values alike */
            for (int j = 0; j < head_dim; j++) {
                store1(layer_keys, half, head_offset + (size_t)j * context + slot, k[j]);
                store1(layer_values, half, head_offset + (size_t)slot * head_dim + j, v[j]);
            }
            /* Row by row of the transposed keys: each pass streams one contiguous row. */
            float *row = scores + h * context;
            for (int j = 0; j < head_dim; j++) {
                const size_t key_row = head_offset + (size_t)j * context;
                const float *relative_row = relative + (size_t)j * 2 * context + first;
                __m256 qj = _mm256_set1_ps(q[j]);
                int s = 0;
                for (; s + 8 <= used; s += 8) {
                    __m256 key = _mm256_add_ps(load8(layer_keys, half, key_row + s), _mm256_loadu_ps(relative_row + s));
                    _mm256_storeu_ps(row + s, _mm256_fmadd_ps(qj, key, _mm256_loadu_ps(row + s)));
                }
                for (; s < used; s++) row[s] += q[j] * (load1(layer_keys, half, key_row + s) + relative_row[s]);
            }

            float peak = row[0];
            for (int s = 1; s < used; s++) peak = row[s] > peak ? row[s] : peak;
            __m256 total8 = _mm256_setzero_ps();
            float total = 0.0f;
            int s = 0;
            for (; s + 8 <= used; s += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + s), _mm256_set1_ps(peak)));
                _mm256_storeu_ps(probabilities + s, e);
                total8 = _mm256_add_ps(total8, e);
            }
            for (; s < used; s++) {
                probabilities[s] = expf(row[s] - peak);
                total += probabilities[s];
            }
            total += sum8(total8);
            /* head_dim is 8, 16, 24 or 32 (checked by native.py): up to four accumulators. */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (s = 0; s < used; s++) {
                const size_t value = head_offset + (size_t)s * head_dim;
                __m256 p = _mm256_set1_ps(probabilities[s]);
                a0 = _mm256_fmadd_ps(p, load8(layer_values, half, value), a0);
                if (head_dim > 8) a1 = _mm256_fmadd_ps(p, load8(layer_values, half, value + 8), a1);
                if (head_dim > 16) a2 = _mm256_fmadd_ps(p, load8(layer_values, half, value + 16), a2);
                if (head_dim > 24) a3 = _mm256_fmadd_ps(p, load8(layer_values, half, value + 24), a3);
            }
            __m256 inverse = _mm256_set1_ps(1.0f / total);
            float *head_out = attended + h * head_dim;
            _mm256_storeu_ps(head_out, _mm256_mul_ps(a0, inverse));
            if (head_dim > 8) _mm256_storeu_ps(head_out + 8, _mm256_mul_ps(a1, inverse));
            if (head_dim > 16) _mm256_storeu_ps(head_out + 16, _mm256_mul_ps(a2, inverse));
            if (head_dim > 24) _mm256_storeu_ps(head_out + 24, _mm256_mul_ps(a3, inverse));
        }
        const void *const *norm1 = w + TRANSFORMER_LAYER_NORM1, *const *norm2 = w + TRANSFORMER_LAYER_NORM2;
        gemv(w + TRANSFORMER_LAYER_PROJ, format, attended, out, width, width);
        add_layer_norm(x, out, norm1[NORM_WEIGHT], norm1[NORM_BIAS], width);
        gemv(w + TRANSFORMER_LAYER_FF1, format, x, hidden, d_ff, width);
        relu(hidden, d_ff);
        gemv(w + TRANSFORMER_LAYER_FF2, format, hidden, out, width, d_ff);
        add_layer_norm(x, out, norm2[NORM_WEIGHT], norm2[NORM_BIAS], width);
    }
    gemv(weights + TRANSFORMER_HEAD, format, x, logits, dims->vocab_size, width);
    _mm_setcsr(csr);
}

/* ---- LSTM ------------------------------------------------------------------------------ */

int lstm_scratch_size(const struct lstm_dims *dims) {
    int input = dims->embed_dim > dims->hidden_size ? dims->embed_dim : dims->hidden_size;
    return input + dims->hidden_size + 4 * dims->hidden_size + dims->fc1 + dims->fc2;
}

/* One token through both cells (each one matrix [W_ih | W_hh] on [x, h] and a summed bias,
 * gates in torch's order i, f, g, o), updating h and c ([layers, hidden]) in place, then the
 * head: fc1 -> LayerNorm -> ReLU -> fc2 -> LayerNorm -> ReLU -> linear. */
void lstm_step(const struct lstm_dims *dims, const void *const *weights, float *h, float *c, float *scratch, int token,
               float *logits) {
    const int hidden = dims->hidden_size, format = dims->format;
    int input = dims->embed_dim;
    float *joined = scratch, *gates = joined + (input > hidden ? input : hidden) + hidden;
    float *fc1 = gates + 4 * hidden, *fc2 = fc1 + dims->fc1;
    const float *embed = (const float *)weights[LSTM_EMBED] + (size_t)token * input;
    for (int i = 0; i < input; i++) joined[i] = embed[i];
    for (int layer = 0; layer < dims->num_layers; layer++) {
        const void *const *w = weights + LSTM_MODEL_ENTRIES + layer * LSTM_LAYER_ENTRIES;
        float *layer_h = h + (size_t)layer * hidden, *layer_c = c + (size_t)layer * hidden;
        for (int i = 0; i < hidden; i++) joined[input + i] = layer_h[i];
        gemv(w + LSTM_LAYER_CELL, format, joined, gates, 4 * hidden, input + hidden);
        for (int i = 0; i < hidden; i += 8) {
            __m256 in = sigmoid8(_mm256_loadu_ps(gates + i));
            __m256 forget = sigmoid8(_mm256_loadu_ps(gates + hidden + i));
            __m256 cell = tanh8(_mm256_loadu_ps(gates + 2 * hidden + i));
            __m256 out = sigmoid8(_mm256_loadu_ps(gates + 3 * hidden + i));
            __m256 cv = _mm256_fmadd_ps(forget, _mm256_loadu_ps(layer_c + i), _mm256_mul_ps(in, cell));
            _mm256_storeu_ps(layer_c + i, cv);
            _mm256_storeu_ps(layer_h + i, _mm256_mul_ps(out, tanh8(cv)));
        }
        for (int i = 0; i < hidden; i++) joined[i] = layer_h[i];
        input = hidden;
    }
    const void *const *norm1 = weights + LSTM_NORM1, *const *norm2 = weights + LSTM_NORM2;
    gemv(weights + LSTM_FC1, format, joined, fc1, dims->fc1, hidden);
    add_layer_norm(fc1, NULL, norm1[NORM_WEIGHT], norm1[NORM_BIAS], dims->fc1);
    relu(fc1, dims->fc1);
    gemv(weights + LSTM_FC2, format, fc1, fc2, dims->fc2, dims->fc1);
    add_layer_norm(fc2, NULL, norm2[NORM_WEIGHT], norm2[NORM_BIAS], dims->fc2);
    relu(fc2, dims->fc2);
    gemv(weights + LSTM_HEAD, format, fc2, logits, dims->vocab_size, dims->fc2);
}
