// One-pass CPU attention: the layer output and the attention statistics from the same scores.
//
// Per (batch, head) and block of query rows: S = scaling * Q K^T over every key the block may see (one
// GEMM into a [rows, keys] scratch that stays in cache; the keys span the union of the rows' intervals),
// then per row the max, exp(s - max) with the row sum split by key region and sum e * (s - max) for the
// entropy, then p = e / Z written back while the column sums accumulate, and finally O = P V (a second
// GEMM) straight into the [batch, query_pos, head, d_head] layout transformers expects. The scores are
// computed once instead of twice (SDPA forward + statistics pass), which is what makes capture cost close
// to the plain forward.
//
// Column sums without atomics: the query blocks of a head are dealt round-robin to CHUNKS fixed chunks,
// each with its own column-sum row; the rows are added in chunk order at the end. The result does not
// depend on the number of threads or on which thread ran what.
//
// The mask is one key interval [key_start_i, key_end_i) per query row: causal (with a KV-cache offset),
// sliding-window, chunked-local and prefix-LM masks all have this form, and a block only touches the keys
// between its rows' smallest start and largest end.
//
// Registered as torch.ops.workbench.fused_attention_statistics; the Python side is kernels/fused_cpu.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <dlfcn.h>

namespace {

constexpr int64_t CHUNKS = 4;     // column-sum partials per head (fixed: results independent of threads)
constexpr float LOG_P_FLOOR = -87.0f;  // below this exp is subnormal: flushed to exactly 0

// Hot loops on GCC / Clang vector types: 16 floats per step, lowered to AVX-512, AVX2 or NEON as the
// machine allows (built with -march=native). Tails go through the same code on a padded copy.
constexpr int W = 16;
typedef float f32x16 __attribute__((vector_size(4 * W)));
typedef int32_t i32x16 __attribute__((vector_size(4 * W)));

inline f32x16 load(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, f32x16 v) { std::memcpy(p, &v, sizeof(v)); }
inline f32x16 splat(float x) { return f32x16{} + x; }
inline float lane_sum(f32x16 v) {
  float total = 0.0f;
  for (int l = 0; l < W; ++l) total += v[l];
  return total;
}

// exp(x) for x <= 0 without libm: 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2, Cephes' degree-6
// polynomial (~2 ulp); x < LOG_P_FLOOR gives exactly 0 (no subnormals).
inline f32x16 exp_nonpositive(f32x16 x) {
  const f32x16 xc = x < LOG_P_FLOOR ? splat(LOG_P_FLOOR) : x;
  const f32x16 n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  f32x16 r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.0f);
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < LOG_P_FLOOR ? splat(0.0f) : p * scale;
}

// Applies step(values) to [0, n) in steps of W, storing what it returns; the tail goes through a copy
// padded with `fill`.
template <typename Step>
inline void for_each_vector(float* s, int64_t n, float fill, Step step) {
  int64_t j = 0;
  for (; j + W <= n; j += W) store(s + j, step(load(s + j)));
  if (j < n) {
    float tail[W];
    std::fill(tail, tail + W, fill);
    std::copy(s + j, s + n, tail);
    store(tail, step(load(tail)));
    std::copy(tail, tail + (n - j), s + j);
  }
}

// Read-only: the row is not written back.
float row_max(const float* s, int64_t n) {
  f32x16 m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const f32x16 v = load(s + j);
    m = v > m ? v : m;
  }
  float out = m[0];
  for (int l = 1; l < W; ++l) out = std::max(out, m[l]);
  for (; j < n; ++j) out = std::max(out, s[j]);
  return out;
}

// s[j] <- exp(s[j] - m) for j in [0, n); adds sum e to *mass and sum e * (s - m) to *e_times_log.
void exp_in_place(float* s, int64_t n, float m, double* mass, double* e_times_log) {
  f32x16 sum{}, ent{};
  // padding far below m: exp gives 0 and adds nothing
  for_each_vector(s, n, m - 1.0e4f, [&](f32x16 v) {
    const f32x16 x = v - m;
    const f32x16 e = exp_nonpositive(x);
    sum += e;
    ent += e * x;
    return e;
  });
  *mass += lane_sum(sum);
  *e_times_log += lane_sum(ent);
}

// p[j] <- p[j] * inv_z and column[j] += p[j]; returns sum of the normalised p (the self-check Z).
float normalise_and_add_columns(float* p, int64_t n, float inv_z, float* column) {
  f32x16 total{};
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const f32x16 v = load(p + j) * inv_z;
    store(p + j, v);
    store(column + j, load(column + j) + v);
    total += v;
  }
  float tail = 0.0f;
  for (; j < n; ++j) {
    p[j] *= inv_z;
    column[j] += p[j];
    tail += p[j];
  }
  return lane_sum(total) + tail;
}

// Sum of the 16 lanes as a tree (a chain of 16 dependent adds is what a plain loop compiles to without
// -ffast-math).
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
inline float tree_sum(f32x16 v) {
  const f32x8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// s[g * width + (j - lo)] = scale * q_g . k_j for the `group` query rows q_g = q + g * q_stride and keys j in
// [lo, hi) of k (row stride k_stride): each key is loaded once for the whole group. No BLAS: a GEMM with
// three columns costs more in call and packing overhead (and in MKL's state after the model's large GEMMs)
// than the arithmetic.
void group_scores(const float* q, int64_t q_stride, int64_t group, const float* k, int64_t k_stride, int64_t lo,
                  int64_t hi, int64_t d, float scale, float* s) {
  const int64_t width = hi - lo, d_vec = d / W * W;
  for (int64_t j = lo; j < hi; ++j) {
    const float* key = k + j * k_stride;
    for (int64_t g = 0; g < group; ++g) {
      const float* query = q + g * q_stride;
      f32x16 acc{};
      for (int64_t c = 0; c < d_vec; c += W) acc += load(query + c) * load(key + c);
      float dot = tree_sum(acc);
      for (int64_t c = d_vec; c < d; ++c) dot += query[c] * key[c];
      s[g * width + (j - lo)] = scale * dot;
    }
  }
}

// out_g[c] = sum_j p[g * width + (j - lo)] v_j[c] for the group's rows, written to out + g * out_stride; each
// value row is loaded once for the whole group. acc: scratch of group * d_value floats.
void group_values(const float* p, int64_t group, const float* v, int64_t v_stride, int64_t lo, int64_t hi,
                  int64_t d_value, float* acc, float* out, int64_t out_stride) {
  const int64_t width = hi - lo, d_vec = d_value / W * W;
  std::fill(acc, acc + group * d_value, 0.0f);
  for (int64_t j = lo; j < hi; ++j) {
    const float* value = v + j * v_stride;
    for (int64_t g = 0; g < group; ++g) {
      const float weight = p[g * width + (j - lo)];
      if (weight == 0.0f) continue;  // flushed to zero: adds nothing
      float* a = acc + g * d_value;
      for (int64_t c = 0; c < d_vec; c += W) store(a + c, load(a + c) + weight * load(value + c));
      for (int64_t c = d_vec; c < d_value; ++c) a[c] += weight * value[c];
    }
  }
  for (int64_t g = 0; g < group; ++g) std::copy(acc + g * d_value, acc + (g + 1) * d_value, out + g * out_stride);
}

// BLAS sgemm (Fortran interface, column-major) as exported by the libraries torch links: MKL's "SGEMM" on
// x86 wheels, "sgemm_" elsewhere (OpenBLAS). cpublas::gemm is not exported from libtorch_cpu.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*, const int*);

// MKL threads a GEMM it is given from inside an OpenMP region unless told not to; a threaded GEMM splits
// the long P V reduction differently with the thread count. Each worker asks for one thread for itself.
using SetLocalThreadsFn = int (*)(int);

SetLocalThreadsFn find_set_local_threads() {
  return reinterpret_cast<SetLocalThreadsFn>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
}

SgemmFn find_sgemm() {
  for (const char* name : {"SGEMM", "sgemm_", "sgemm"})
    if (void* symbol = dlsym(RTLD_DEFAULT, name)) return reinterpret_cast<SgemmFn>(symbol);
  return nullptr;
}

// C (column-major, m x n, ldc) = alpha op(A) op(B) + beta C.
void gemm(SgemmFn sgemm, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = m, ni = n, ki = k, lda_i = lda, ldb_i = ldb, ldc_i = ldc;
  sgemm(&ta, &tb, &mi, &ni, &ki, &alpha, a, &lda_i, b, &ldb_i, &beta, c, &ldc_i);
}

struct Run {
  int64_t start, end, region;
};

// The checked, unit-stride inputs of one kernel call, shared by the blocked and the decode kernels.
struct Call {
  at::Tensor query, key, value, key_start, key_end;
  int64_t batch, heads, n_queries, d, kv_heads, n_keys, d_value, group;
  const int64_t* start_data;
  const int64_t* end_data;
  int64_t bounds_batch_stride;  // 0 when one set of key intervals serves every batch row
  std::vector<Run> runs;
};

Call prepare_call(const char* name, const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
                  const at::Tensor& key_start_in, const at::Tensor& key_end_in, const at::Tensor& runs_in) {
  TORCH_CHECK(query_in.dim() == 4 && key_in.dim() == 4 && value_in.dim() == 4, "query, key, value must be 4-d");
  TORCH_CHECK(query_in.scalar_type() == at::kFloat && key_in.scalar_type() == at::kFloat &&
                  value_in.scalar_type() == at::kFloat, name, " takes fp32");
  TORCH_CHECK(query_in.device().is_cpu(), name, " runs on CPU tensors");
  Call call;
  call.query = query_in.stride(3) == 1 ? query_in : query_in.contiguous();
  call.key = key_in.stride(3) == 1 ? key_in : key_in.contiguous();
  call.value = value_in.stride(3) == 1 ? value_in : value_in.contiguous();
  call.batch = call.query.size(0), call.heads = call.query.size(1), call.n_queries = call.query.size(2);
  call.d = call.query.size(3);
  call.kv_heads = call.key.size(1), call.n_keys = call.key.size(2), call.d_value = call.value.size(3);
  TORCH_CHECK(call.heads % call.kv_heads == 0 && call.value.size(1) == call.kv_heads &&
                  call.value.size(2) == call.n_keys, "bad kv shapes");
  call.group = call.heads / call.kv_heads;

  call.key_start = key_start_in.to(at::kLong).contiguous();
  call.key_end = key_end_in.to(at::kLong).contiguous();
  const at::Tensor& key_start = call.key_start;
  TORCH_CHECK(key_start.dim() == 2 && key_start.sizes() == call.key_end.sizes() &&
                  key_start.size(1) == call.n_queries && (key_start.size(0) == 1 || key_start.size(0) == call.batch),
              "key_start / key_end must be [batch or 1, query_pos]");
  call.start_data = key_start.data_ptr<int64_t>();
  call.end_data = call.key_end.data_ptr<int64_t>();
  for (int64_t r = 0; r < key_start.numel(); ++r)
    TORCH_CHECK(0 <= call.start_data[r] && call.start_data[r] <= call.end_data[r] && call.end_data[r] <= call.n_keys,
                "key intervals must satisfy 0 <= start <= end <= key_pos");
  call.bounds_batch_stride = key_start.size(0) == 1 ? 0 : call.n_queries;

  const at::Tensor runs_t = runs_in.to(at::kLong).contiguous();
  call.runs.resize(runs_t.size(0));
  for (size_t r = 0; r < call.runs.size(); ++r) {
    const int64_t* row = runs_t.data_ptr<int64_t>() + 3 * r;
    call.runs[r] = {row[0], row[1], row[2]};
  }
  return call;
}

}  // namespace

// query [B, H, q, d], key / value [B, Hkv, k, d] fp32 with unit stride on d; key_start / key_end
// [B or 1, q] int64: row i of batch b sees keys [key_start[b, i], key_end[b, i]) (0 <= start <= end <= k).
// runs [n_runs, 3] int64 (start, end, region) cover [0, k).
// Returns output [B, q, H, d], lse [B, H, q], key_mass [B, H, k], region_mass [B, H, q, R],
// entropy [B, H, q], normaliser [B, H, q]. Rows that see no key get zeros everywhere.
std::vector<at::Tensor> fused_attention_statistics(
    const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in, double scaling,
    const at::Tensor& key_start_in, const at::Tensor& key_end_in, const at::Tensor& runs_in, int64_t n_regions,
    int64_t block_q) {
  const Call call = prepare_call("fused_attention_statistics", query_in, key_in, value_in, key_start_in, key_end_in, runs_in);
  const at::Tensor &query = call.query, &key = call.key, &value = call.value;
  const int64_t batch = call.batch, heads = call.heads, n_queries = call.n_queries, d = call.d;
  const int64_t kv_heads = call.kv_heads, n_keys = call.n_keys, d_value = call.d_value, group = call.group;
  const int64_t *start_data = call.start_data, *end_data = call.end_data;
  const int64_t bounds_batch_stride = call.bounds_batch_stride;
  const std::vector<Run>& runs = call.runs;

  static const SgemmFn sgemm = find_sgemm();
  TORCH_CHECK(sgemm != nullptr, "no BLAS sgemm found in this process; use the two-pass statistics");

  const auto f32 = query.options();
  at::Tensor output = at::zeros({batch, n_queries, heads, d_value}, f32);
  at::Tensor lse = at::zeros({batch, heads, n_queries}, f32);
  at::Tensor column_parts = at::zeros({batch, heads, CHUNKS, n_keys}, f32);
  at::Tensor region_mass = at::zeros({batch, heads, n_queries, n_regions}, f32);
  at::Tensor entropy = at::zeros({batch, heads, n_queries}, f32);
  at::Tensor normaliser = at::zeros({batch, heads, n_queries}, f32);

  const int64_t n_blocks = (n_queries + block_q - 1) / block_q;
  const float scale = static_cast<float>(scaling);
  const float* q_data = query.data_ptr<float>();
  const float* k_data = key.data_ptr<float>();
  const float* v_data = value.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  float* lse_data = lse.data_ptr<float>();
  float* parts_data = column_parts.data_ptr<float>();
  float* region_data = region_mass.data_ptr<float>();
  float* entropy_data = entropy.data_ptr<float>();
  float* z_data = normaliser.data_ptr<float>();

  static const SetLocalThreadsFn set_local_threads = find_set_local_threads();
  at::parallel_for(0, batch * heads * CHUNKS, 1, [&](int64_t begin, int64_t end) {
    const int previous_threads = set_local_threads ? set_local_threads(1) : 0;
    std::vector<float> scores(static_cast<size_t>(block_q) * std::max<int64_t>(n_keys, 1));
    std::vector<double> masses(static_cast<size_t>(n_regions));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % CHUNKS, bh = task / CHUNKS, b = bh / heads, h = bh % heads;
      const int64_t kvh = h / group;
      const float* q_head = q_data + b * query.stride(0) + h * query.stride(1);
      const float* k_head = k_data + b * key.stride(0) + kvh * key.stride(1);
      const float* v_head = v_data + b * value.stride(0) + kvh * value.stride(1);
      float* column = parts_data + (bh * CHUNKS + chunk) * n_keys;
      const int64_t* row_start = start_data + b * bounds_batch_stride;
      const int64_t* row_end = end_data + b * bounds_batch_stride;
      for (int64_t block = chunk; block < n_blocks; block += CHUNKS) {
        const int64_t q0 = block * block_q, rows = std::min(block_q, n_queries - q0);
        int64_t k0 = n_keys, k1 = 0;  // the keys any row of the block sees: [k0, k1)
        for (int64_t i = q0; i < q0 + rows; ++i)
          if (row_end[i] > row_start[i]) {
            k0 = std::min(k0, row_start[i]);
            k1 = std::max(k1, row_end[i]);
          }
        if (k1 <= k0) continue;  // no row of the block sees a key: zeros
        const int64_t width = k1 - k0;
        float* s = scores.data();
        // S [rows, width] row-major = (K [k0:k1, d])(Q [rows, d])^T in BLAS's column-major terms.
        gemm(sgemm, true, false, width, rows, d, scale, k_head + k0 * key.stride(2), key.stride(2),
             q_head + q0 * query.stride(2), query.stride(2), 0.0f, s, width);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = s + i * width;
          const int64_t lo = row_start[q0 + i], hi = std::max(row_end[q0 + i], lo);
          const int64_t a = std::clamp<int64_t>(lo - k0, 0, width), z = std::clamp<int64_t>(hi - k0, a, width);
          const int64_t stat = (b * heads + h) * n_queries + q0 + i;
          std::fill(row, row + a, 0.0f);  // hidden keys add nothing to P V
          std::fill(row + z, row + width, 0.0f);
          if (z == a) continue;
          float* seen = row + a;
          const int64_t n_seen = z - a;
          const float m = row_max(seen, n_seen);
          std::fill(masses.begin(), masses.end(), 0.0);
          double e_log_e = 0.0;
          for (const Run& run : runs) {
            const int64_t ra = std::max(run.start, lo), rz = std::min(run.end, hi);
            if (rz > ra) exp_in_place(row + (ra - k0), rz - ra, m, &masses[run.region], &e_log_e);
          }
          double z_sum = 0.0;
          for (double v : masses) z_sum += v;
          const double inv_z = 1.0 / z_sum;
          lse_data[stat] = m + static_cast<float>(std::log(z_sum));
          entropy_data[stat] = static_cast<float>(std::log(z_sum) - e_log_e * inv_z);
          for (int64_t r = 0; r < n_regions; ++r)
            region_data[stat * n_regions + r] = static_cast<float>(masses[r] * inv_z);
          z_data[stat] = normalise_and_add_columns(seen, n_seen, static_cast<float>(inv_z), column + lo);
        }
        // O [rows, d_value] = P [rows, width] V [k0:k1, d_value], written to output[b, q0 + i, h, :].
        gemm(sgemm, false, false, d_value, rows, width, 1.0f, v_head + k0 * value.stride(2), value.stride(2), s,
             width, 0.0f, out_data + ((b * n_queries + q0) * heads + h) * d_value, heads * d_value);
      }
    }
    if (set_local_threads) set_local_threads(previous_threads);  // 0 restores the global setting
  });
  at::Tensor key_mass = column_parts.sum(2);  // fixed chunk order: deterministic
  return {output, lse, key_mass, region_mass, entropy, normaliser};
}

// The decode path: a few query rows (one per KV-cache decode step) over a long cache. Query blocks do nothing
// for one row, so the work is cut by key head instead: one task per (batch, kv_head) computes, per row, the
// scores of all query heads sharing that key head over the row's key interval (each key read once for the
// group), the same softmax statistics per head, and O = P V (each value row read once for the group) written
// straight into output[b, i, h0:h0 + group, :]. Each task owns its heads' column sums (rows added in order), so there
// are no partials to allocate and sum, and the result does not depend on the thread count. Small calls run on
// the calling thread: an OpenMP region costs more than the whole call at a few hundred keys.
std::vector<at::Tensor> fused_decode_statistics(
    const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in, double scaling,
    const at::Tensor& key_start_in, const at::Tensor& key_end_in, const at::Tensor& runs_in, int64_t n_regions) {
  const Call call = prepare_call("fused_decode_statistics", query_in, key_in, value_in, key_start_in, key_end_in, runs_in);
  const at::Tensor &query = call.query, &key = call.key, &value = call.value;
  const int64_t batch = call.batch, heads = call.heads, n_queries = call.n_queries, d = call.d;
  const int64_t kv_heads = call.kv_heads, n_keys = call.n_keys, d_value = call.d_value, group = call.group;
  const int64_t *start_data = call.start_data, *end_data = call.end_data;
  const int64_t bounds_batch_stride = call.bounds_batch_stride;
  const std::vector<Run>& runs = call.runs;

  const auto f32 = query.options();
  at::Tensor output = at::zeros({batch, n_queries, heads, d_value}, f32);
  at::Tensor lse = at::zeros({batch, heads, n_queries}, f32);
  at::Tensor key_mass = at::zeros({batch, heads, n_keys}, f32);
  at::Tensor region_mass = at::zeros({batch, heads, n_queries, n_regions}, f32);
  at::Tensor entropy = at::zeros({batch, heads, n_queries}, f32);
  at::Tensor normaliser = at::zeros({batch, heads, n_queries}, f32);

  const float scale = static_cast<float>(scaling);
  const float* q_data = query.data_ptr<float>();
  const float* k_data = key.data_ptr<float>();
  const float* v_data = value.data_ptr<float>();
  float* out_data = output.data_ptr<float>();
  float* lse_data = lse.data_ptr<float>();
  float* mass_data = key_mass.data_ptr<float>();
  float* region_data = region_mass.data_ptr<float>();
  float* entropy_data = entropy.data_ptr<float>();
  float* z_data = normaliser.data_ptr<float>();

  const int64_t tasks = batch * kv_heads;
  const int64_t work = batch * heads * n_queries * n_keys * d;
  const int64_t grain = work < (int64_t{1} << 21) ? std::max<int64_t>(tasks, 1) : 1;  // ~2M MACs: one thread
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(group) * std::max<int64_t>(n_keys, 1));
    std::vector<float> out_scratch(static_cast<size_t>(group * d_value));
    std::vector<double> masses(static_cast<size_t>(n_regions));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, kvh = task % kv_heads, h0 = kvh * group;
      const float* k_head = k_data + b * key.stride(0) + kvh * key.stride(1);
      const float* v_head = v_data + b * value.stride(0) + kvh * value.stride(1);
      for (int64_t i = 0; i < n_queries; ++i) {
        const int64_t lo = start_data[b * bounds_batch_stride + i];
        const int64_t hi = std::max(end_data[b * bounds_batch_stride + i], lo);
        if (hi == lo) continue;  // a row that sees no key: zeros
        const int64_t width = hi - lo;
        float* s = scores.data();
        // S [group, width]: the scores of the group's query rows (query.stride(1) apart) over keys [lo, hi)
        group_scores(q_data + b * query.stride(0) + h0 * query.stride(1) + i * query.stride(2), query.stride(1),
                     group, k_head, key.stride(2), lo, hi, d, scale, s);
        for (int64_t g = 0; g < group; ++g) {
          const int64_t h = h0 + g;
          float* row = s + g * width;
          const int64_t stat = (b * heads + h) * n_queries + i;
          const float m = row_max(row, width);
          std::fill(masses.begin(), masses.end(), 0.0);
          double e_log_e = 0.0;
          for (const Run& run : runs) {
            const int64_t ra = std::max(run.start, lo), rz = std::min(run.end, hi);
            if (rz > ra) exp_in_place(row + (ra - lo), rz - ra, m, &masses[run.region], &e_log_e);
          }
          double z_sum = 0.0;
          for (double v : masses) z_sum += v;
          const double inv_z = 1.0 / z_sum;
          lse_data[stat] = m + static_cast<float>(std::log(z_sum));
          entropy_data[stat] = static_cast<float>(std::log(z_sum) - e_log_e * inv_z);
          for (int64_t r = 0; r < n_regions; ++r)
            region_data[stat * n_regions + r] = static_cast<float>(masses[r] * inv_z);
          z_data[stat] = normalise_and_add_columns(row, width, static_cast<float>(inv_z),
                                                   mass_data + (b * heads + h) * n_keys + lo);
        }
        // O [group, d_value] = P [group, width] V [lo:hi, d_value] -> output[b, i, h0:h0 + group, :].
        group_values(s, group, v_head, value.stride(2), lo, hi, d_value, out_scratch.data(),
                     out_data + ((b * n_queries + i) * heads + h0) * d_value, d_value);
      }
    }
  });
  return {output, lse, key_mass, region_mass, entropy, normaliser};
}

TORCH_LIBRARY(workbench, m) {
  m.def(
      "fused_attention_statistics(Tensor query, Tensor key, Tensor value, float scaling, Tensor key_start, "
      "Tensor key_end, Tensor runs, int n_regions, int block_q) -> Tensor[]");
  m.impl("fused_attention_statistics", c10::DispatchKey::CPU, &fused_attention_statistics);
  m.def(
      "fused_decode_statistics(Tensor query, Tensor key, Tensor value, float scaling, Tensor key_start, "
      "Tensor key_end, Tensor runs, int n_regions) -> Tensor[]");
  m.impl("fused_decode_statistics", c10::DispatchKey::CPU, &fused_decode_statistics);
}
