// Multi-threaded, mask-aware dot-product attention for XLA:CPU (float32), forward and backward.
//
// Built on first use by almol_jax/cpu/attention_kernel.py (c++ -O3 -march=native) and called
// through the XLA FFI. Why it exists (issue 8): XLA:CPU runs a batched matrix product on one
// thread and skips no work for masked keys; here the (batch, kv head) items are spread over
// XLA's intra-op thread pool, and 64x64 score tiles with no visible key are never computed.
//
// Layouts (row-major, as the projections produce them: no transposed copies): q [B, T, N, H],
// k and v [B, S, K, H] (query head n reads kv head n / (N / K)), mask [B, T, S] (uint8, 1 =
// visible), tiles [B, T, J] (J = ceil(S / 64): 0 no key of tile j visible to query t, 1 some,
// 2 all). Forward outputs o [B, T, N, H] and lse [B, N, T] (each row's softmax max plus the log
// of its denominator; +1e30 for a row with no visible key, whose output is 0). Backward takes
// q, k, v, mask, tiles, o, lse, do and returns dq, dk, dv. Work items are (batch, kv head).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4), aligned(4)));

constexpr int TILE = 64;          // query rows and keys per tile
constexpr float MASKED = -1e30f;  // score of a hidden key
constexpr float EMPTY_LSE = 1e30f;

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vf*>(p) = x; }
inline vf splat(float a) { return vf{} + a; }

// exp for float vectors: Cephes' expf polynomial on x - n ln2, times 2^n built in the exponent
// bits. Relative error ~2 ulp; inputs below -87.3 give exactly 0 (n = -127 -> +0.0).
inline vf vexp(vf x) {
  x = x < splat(88.3f) ? x : splat(88.3f);
  x = x > splat(-88.0f) ? x : splat(-88.0f);
  vf t = x * 1.44269504088896341f + 12582912.0f;
  vf n = t - 12582912.0f;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * reinterpret_cast<vf&>(e);
}
inline float sexp(float x) {
  vf v = splat(x);
  return vexp(v)[0];
}

typedef uint8_t vu8 __attribute__((vector_size(VW), aligned(1)));

inline float row_max(const float* x, int n, float mx) {
  int c = 0;
  vf m = splat(mx);
  for (; c + VW <= n; c += VW) {
    vf v = load(x + c);
    m = v > m ? v : m;
  }
  for (int i = 0; i < VW; ++i) mx = std::max(mx, m[i]);
  for (; c < n; ++c) mx = std::max(mx, x[c]);
  return mx;
}

// x[c] = MASKED where mask[c] is 0; returns max(mx, max_c x[c]) over the result.
inline float mask_and_max(float* x, const uint8_t* mask, int n, float mx) {
  int c = 0;
  vf m = splat(mx);
  for (; c + VW <= n; c += VW) {
    vi k = __builtin_convertvector(*reinterpret_cast<const vu8*>(mask + c), vi);
    vf v = k != 0 ? load(x + c) : splat(MASKED);
    store(x + c, v);
    m = v > m ? v : m;
  }
  for (int i = 0; i < VW; ++i) mx = std::max(mx, m[i]);
  for (; c < n; ++c) {
    if (!mask[c]) x[c] = MASKED;
    mx = std::max(mx, x[c]);
  }
  return mx;
}

// x[c] = exp(x[c] * scale - shift) in place (masked raw scores give exactly 0); returns the sum.
inline float exp_row(float* x, int n, float scale, float shift) {
  int c = 0;
  vf acc{};
  for (; c + VW <= n; c += VW) {
    vf e = vexp(load(x + c) * scale - shift);
    store(x + c, e);
    acc += e;
  }
  float sum = 0.0f;
  for (int i = 0; i < VW; ++i) sum += acc[i];
  for (; c < n; ++c) sum += (x[c] = sexp(x[c] * scale - shift));
  return sum;
}

// x[c] = mask[c] ? exp(x[c] * scale - shift) : 0 in place (mask == nullptr: all visible).
inline void prob_row(float* x, const uint8_t* mask, int n, float scale, float shift) {
  int c = 0;
  if (mask == nullptr) {
    for (; c + VW <= n; c += VW) store(x + c, vexp(load(x + c) * scale - shift));
    for (; c < n; ++c) x[c] = sexp(x[c] * scale - shift);
    return;
  }
  for (; c + VW <= n; c += VW) {
    vi k = __builtin_convertvector(*reinterpret_cast<const vu8*>(mask + c), vi);
    store(x + c, k != 0 ? vexp(load(x + c) * scale - shift) : vf{});
  }
  for (; c < n; ++c) x[c] = mask[c] ? sexp(x[c] * scale - shift) : 0.0f;
}

inline void scale_row(float* x, int n, float a) {
  int c = 0;
  for (; c + VW <= n; c += VW) store(x + c, load(x + c) * a);
  for (; c < n; ++c) x[c] *= a;
}

// C[r, n] (+)= sum_k A(r, k) B[k, n], A(r, k) = A[r * ars + k * aks], r < R, n < N, k < KD.
template <int RB, int NV>
inline void block(float* C, int ldc, const float* A, int ars, int aks, const float* B, int ldb,
                  int KD, bool acc) {
  vf c[RB][NV];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = acc ? load(C + i * ldc + j * VW) : vf{};
  for (int k = 0; k < KD; ++k) {
    vf b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(B + k * ldb + j * VW);
    for (int i = 0; i < RB; ++i) {
      const float a = A[i * ars + k * aks];
      for (int j = 0; j < NV; ++j) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NV; ++j) store(C + i * ldc + j * VW, c[i][j]);
}

void gemm(float* C, int ldc, const float* A, int ars, int aks, const float* B, int ldb, int R,
          int N, int KD, bool acc) {
  constexpr int NV = 64 / VW > 4 ? 4 : 64 / VW;  // 4 vectors of columns per block
  constexpr int CB = NV * VW;
  int n0 = 0;
  for (; n0 + CB <= N; n0 += CB) {
    int r0 = 0;
    for (; r0 + 4 <= R; r0 += 4)
      block<4, NV>(C + r0 * ldc + n0, ldc, A + r0 * ars, ars, aks, B + n0, ldb, KD, acc);
    for (; r0 < R; ++r0)
      block<1, NV>(C + r0 * ldc + n0, ldc, A + r0 * ars, ars, aks, B + n0, ldb, KD, acc);
  }
  for (; n0 + VW <= N; n0 += VW) {
    int r0 = 0;
    for (; r0 + 4 <= R; r0 += 4)
      block<4, 1>(C + r0 * ldc + n0, ldc, A + r0 * ars, ars, aks, B + n0, ldb, KD, acc);
    for (; r0 < R; ++r0)
      block<1, 1>(C + r0 * ldc + n0, ldc, A + r0 * ars, ars, aks, B + n0, ldb, KD, acc);
  }
  for (; n0 < N; ++n0)
    for (int r = 0; r < R; ++r) {
      float s = acc ? C[r * ldc + n0] : 0.0f;
      for (int k = 0; k < KD; ++k) s += A[r * ars + k * aks] * B[k * ldb + n0];
      C[r * ldc + n0] = s;
    }
}

struct Dims {
  int64_t B, T, N, K, G, S, H, J;
  int64_t qs() const { return N * H; }  // row stride of q, o, do, dq ([B, T, N, H])
  int64_t ks() const { return K * H; }  // row stride of k, v, dk, dv ([B, S, K, H])
};

ffi::Error dims_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v,
                   ffi::Buffer<ffi::U8>& mask, ffi::Buffer<ffi::U8>& tiles, Dims& d) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  auto md = mask.dimensions(), td = tiles.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || md.size() != 3 || td.size() != 3)
    return ffi::Error::InvalidArgument("cpu_attention: q/k/v must be 4-d, mask/tiles 3-d");
  d = Dims{qd[0], qd[1], qd[2], kd[2], 1, kd[1], qd[3], td[2]};
  bool ok = d.K > 0 && d.N % d.K == 0 && kd[0] == d.B && kd[3] == d.H && vd[0] == d.B &&
            vd[1] == d.S && vd[2] == d.K && vd[3] == d.H && md[0] == d.B && md[1] == d.T &&
            md[2] == d.S && td[0] == d.B && td[1] == d.T && d.J == (d.S + TILE - 1) / TILE;
  if (!ok) return ffi::Error::InvalidArgument("cpu_attention: inconsistent shapes");
  d.G = d.N / d.K;
  return ffi::Error::Success();
}

// Runs fn(item) for item in [0, n) on the calling thread and up to num_threads - 1 tasks of
// XLA's intra-op pool; returns when every item is done. Tasks that start late find no item
// left; the shared state outlives the call for them.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, F fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, fn]() {
    int64_t i, finished = 0;
    while ((i = state->next.fetch_add(1)) < n) {
      fn(i);
      ++finished;
    }
    if (finished) state->done.fetch_add(finished);
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() { work(); });
  work();
  while (state->done.load() < n) std::this_thread::yield();
}

// Visibility of key tile j to query rows [t0, t0 + rows): 0 none, 1 some, 2 all.
int tile_state(const uint8_t* tiles_TJ, const Dims& d, int64_t t0, int rows, int64_t j) {
  bool any = false, all = true;
  for (int64_t t = t0; t < t0 + rows; ++t) {
    uint8_t s = tiles_TJ[t * d.J + j];
    any |= s != 0;
    all &= s == 2;
  }
  return all ? 2 : (any ? 1 : 0);
}

int key_cols(const Dims& d, int64_t j) { return (int)std::min<int64_t>(TILE, d.S - j * TILE); }

// kt[h, s] = k[s, h] for one (batch, kv head): k rows strided by K * H.
void transpose_keys(float* kt, const float* k, const Dims& d) {
  for (int64_t s0 = 0; s0 < d.S; s0 += 8)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t s = s0; s < std::min(d.S, s0 + 8); ++s) kt[h * d.S + s] = k[s * d.ks() + h];
}

void zero_rows(float* x, int64_t rows, int64_t stride, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) std::memset(x + r * stride, 0, sizeof(float) * width);
}

// One (batch, kv head) item: its G query heads over all T queries.
void forward_item(const Dims& d, int64_t item, float scale, const float* Q, const float* Kx,
                  const float* V, const uint8_t* mask, const uint8_t* tiles, float* O, float* L,
                  std::vector<float>& buf) {
  const int64_t b = item / d.K, kh = item % d.K;
  const float* k = Kx + (b * d.S * d.K + kh) * d.H;
  const float* v = V + (b * d.S * d.K + kh) * d.H;
  const uint8_t* mask_TS = mask + b * d.T * d.S;
  const uint8_t* tiles_TJ = tiles + b * d.T * d.J;
  const int64_t SP = d.J * TILE;
  buf.resize(d.H * d.S + TILE * SP);
  float* kt = buf.data();     // [H, S]
  float* s = kt + d.H * d.S;  // [TILE, J * TILE]: a row block's scores, then probabilities
  transpose_keys(kt, k, d);
  std::vector<int> state(d.J);
  for (int64_t n = kh * d.G; n < (kh + 1) * d.G; ++n) {
    float* lse = L + (b * d.N + n) * d.T;
    for (int64_t t0 = 0; t0 < d.T; t0 += TILE) {
      const int rows = (int)std::min<int64_t>(TILE, d.T - t0);
      const float* q = Q + ((b * d.T + t0) * d.N + n) * d.H;
      float* o = O + ((b * d.T + t0) * d.N + n) * d.H;
      // raw scores of the visible tiles (hidden keys MASKED) and each row's max
      float mx[TILE];
      std::fill(mx, mx + rows, MASKED);
      bool any = false;
      for (int64_t j = 0; j < d.J; ++j) {
        state[j] = tile_state(tiles_TJ, d, t0, rows, j);
        if (!state[j]) continue;
        any = true;
        const int cols = key_cols(d, j);
        float* sj = s + j * TILE;
        gemm(sj, (int)SP, q, (int)d.qs(), 1, kt + j * TILE, (int)d.S, rows, cols, (int)d.H, false);
        for (int r = 0; r < rows; ++r) {
          float* sr = sj + r * SP;
          mx[r] = state[j] == 2 ? row_max(sr, cols, mx[r])
                                : mask_and_max(sr, mask_TS + (t0 + r) * d.S + j * TILE, cols, mx[r]);
        }
      }
      if (!any) {
        zero_rows(o, rows, d.qs(), d.H);
        for (int r = 0; r < rows; ++r) lse[t0 + r] = EMPTY_LSE;
        continue;
      }
      // unnormalised probabilities in place; the output rows are divided by the sums after
      float inv[TILE];
      for (int r = 0; r < rows; ++r) {
        float* sr = s + r * SP;
        if (mx[r] <= 0.5f * MASKED) {  // no visible key in this row: output 0
          for (int64_t j = 0; j < d.J; ++j)
            if (state[j]) std::fill(sr + j * TILE, sr + j * TILE + key_cols(d, j), 0.0f);
          lse[t0 + r] = EMPTY_LSE;
          inv[r] = 0.0f;
          continue;
        }
        const float shift = mx[r] * scale;
        float sum = 0.0f;
        for (int64_t j = 0; j < d.J; ++j)
          if (state[j]) sum += exp_row(sr + j * TILE, key_cols(d, j), scale, shift);
        inv[r] = 1.0f / sum;
        lse[t0 + r] = shift + std::log(sum);
      }
      bool first = true;
      for (int64_t j = 0; j < d.J; ++j) {
        if (!state[j]) continue;
        gemm(o, (int)d.qs(), s + j * TILE, (int)SP, 1, v + j * TILE * d.ks(), (int)d.ks(), rows,
             (int)d.H, key_cols(d, j), !first);
        first = false;
      }
      for (int r = 0; r < rows; ++r) scale_row(o + r * d.qs(), (int)d.H, inv[r]);
    }
  }
}

void backward_item(const Dims& d, int64_t item, float scale, const float* Q, const float* Kx,
                   const float* V, const uint8_t* mask, const uint8_t* tiles, const float* O,
                   const float* L, const float* dO, float* dQ, float* dK, float* dV,
                   std::vector<float>& buf) {
  const int64_t b = item / d.K, kh = item % d.K;
  const int64_t koff = (b * d.S * d.K + kh) * d.H;
  const float *k = Kx + koff, *v = V + koff;
  float *dk = dK + koff, *dv = dV + koff;
  const uint8_t* mask_TS = mask + b * d.T * d.S;
  const uint8_t* tiles_TJ = tiles + b * d.T * d.J;
  buf.resize(2 * d.H * d.S + 2 * TILE * TILE + TILE);
  float* kt = buf.data();       // [H, S]
  float* vt = kt + d.H * d.S;   // [H, S]
  float* p = vt + d.H * d.S;    // [TILE, TILE] probabilities of one tile
  float* ds = p + TILE * TILE;  // [TILE, TILE] dP, then dS
  float* D = ds + TILE * TILE;  // [TILE] rowsum(dO * O)
  transpose_keys(kt, k, d);
  transpose_keys(vt, v, d);
  zero_rows(dk, d.S, d.ks(), d.H);
  zero_rows(dv, d.S, d.ks(), d.H);
  for (int64_t n = kh * d.G; n < (kh + 1) * d.G; ++n) {
    const float* lse = L + (b * d.N + n) * d.T;
    for (int64_t t0 = 0; t0 < d.T; t0 += TILE) {
      const int rows = (int)std::min<int64_t>(TILE, d.T - t0);
      const int64_t off = ((b * d.T + t0) * d.N + n) * d.H;
      const float *q = Q + off, *o = O + off, *g = dO + off;
      float* dq = dQ + off;
      for (int r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t h = 0; h < d.H; ++h) acc += g[r * d.qs() + h] * o[r * d.qs() + h];
        D[r] = acc;
      }
      bool first = true;
      for (int64_t j = 0; j < d.J; ++j) {
        const int state = tile_state(tiles_TJ, d, t0, rows, j);
        if (!state) continue;
        const int cols = key_cols(d, j);
        // P = exp(scale q k^T - lse), 0 where the key is hidden
        gemm(p, TILE, q, (int)d.qs(), 1, kt + j * TILE, (int)d.S, rows, cols, (int)d.H, false);
        for (int r = 0; r < rows; ++r)
          prob_row(p + r * TILE, state == 2 ? nullptr : mask_TS + (t0 + r) * d.S + j * TILE, cols,
                   scale, lse[t0 + r]);
        // dP = dO V^T, then dS = P (dP - D) scale
        gemm(ds, TILE, g, (int)d.qs(), 1, vt + j * TILE, (int)d.S, rows, cols, (int)d.H, false);
        for (int r = 0; r < rows; ++r) {
          float* dr = ds + r * TILE;
          const float* pr = p + r * TILE;
          const float dd = D[r];
          int c = 0;
          for (; c + VW <= cols; c += VW)
            store(dr + c, load(pr + c) * (load(dr + c) - dd) * scale);
          for (; c < cols; ++c) dr[c] = pr[c] * (dr[c] - dd) * scale;
        }
        // dV_j += P^T dO, dK_j += dS^T Q, dQ += dS K_j
        const int64_t kj = j * TILE * d.ks();
        gemm(dv + kj, (int)d.ks(), p, 1, TILE, g, (int)d.qs(), cols, (int)d.H, rows, true);
        gemm(dk + kj, (int)d.ks(), ds, 1, TILE, q, (int)d.qs(), cols, (int)d.H, rows, true);
        gemm(dq, (int)d.qs(), ds, TILE, 1, k + kj, (int)d.ks(), rows, (int)d.H, cols, !first);
        first = false;
      }
      if (first) zero_rows(dq, rows, d.qs(), d.H);
    }
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U8> mask,
                   ffi::Buffer<ffi::U8> tiles, float scale, ffi::ResultBuffer<ffi::F32> o,
                   ffi::ResultBuffer<ffi::F32> lse) {
  Dims d;
  if (auto e = dims_of(q, k, v, mask, tiles, d); e.failure()) return e;
  const float *Q = q.typed_data(), *Kx = k.typed_data(), *V = v.typed_data();
  const uint8_t *Mk = mask.typed_data(), *Tl = tiles.typed_data();
  float *Ot = o->typed_data(), *Lt = lse->typed_data();
  parallel_for(pool, d.B * d.K, [=](int64_t item) {
    thread_local std::vector<float> buf;
    forward_item(d, item, scale, Q, Kx, V, Mk, Tl, Ot, Lt, buf);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U8> mask,
                    ffi::Buffer<ffi::U8> tiles, ffi::Buffer<ffi::F32> o,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Dims d;
  if (auto e = dims_of(q, k, v, mask, tiles, d); e.failure()) return e;
  const float *Q = q.typed_data(), *Kx = k.typed_data(), *V = v.typed_data();
  const float *Ot = o.typed_data(), *Lt = lse.typed_data(), *G = dout.typed_data();
  const uint8_t *Mk = mask.typed_data(), *Tl = tiles.typed_data();
  float *dQ = dq->typed_data(), *dK = dk->typed_data(), *dV = dv->typed_data();
  parallel_for(pool, d.B * d.K, [=](int64_t item) {
    thread_local std::vector<float> buf;
    backward_item(d, item, scale, Q, Kx, V, Mk, Tl, Ot, Lt, G, dQ, dK, dV, buf);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlmolCpuAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlmolCpuAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
