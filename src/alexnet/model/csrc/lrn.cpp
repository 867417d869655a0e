// §3.3 local response normalisation on the CPU as torch operators: alexnet::lrn and its gradient,
// alexnet::lrn_backward (built by alexnet/model/lrn_op.py; autograd formula and fake tensors there).
//
//   b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2)^beta
//
// the window the `size` maps centred on i within its group of C/groups maps, cut off at the group's
// first and last map. Why a kernel: the torch operations pass each activation-sized tensor through
// memory about seven times (square, window sum, +k, power, products) and keep the scale and
// scale^-beta for the backward; here a few pixels' maps at a time are read once into float32 buffers
// that stay in L1, computed in one pass (forward) or two (backward), and written once. The backward
// computes the scale again from the input (two activation-sized tensors fewer kept per layer). The
// ReLU before the layer is not fused: the net's ReLU modules stay visible to hooks and fx.
// Measured: bench/docs/native.md.
//
// Layouts (the `Tile` below): channels_last, a few pixels' rows of C maps, each group's maps between
// zeros; NCHW, TILE pixels of one image, [map][pixel]; so that every loop runs over contiguous floats
// however few maps a group has. Anything else is made contiguous first. Outputs take the input's
// memory format (empty_like). Work is split over pixels with at::parallel_for (torch's threads).
//
// float32 and bfloat16 in and out, float32 inside (a bf16 is the top half of a float32, read
// exactly; results rounded to the nearest even bf16, as torch rounds). target_clones builds an
// AVX-512, an AVX2 and a baseline copy of the loops and picks one at load time (a library in a home
// folder may be loaded on another machine); -ffp-contract=off (lrn_op.py) makes every copy round alike.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif
// Everything a clone calls is inlined into it, so that each copy's loops are compiled for its CPU.
#define INLINE inline __attribute__((always_inline))

namespace {

constexpr int64_t TILE = 16;           // NCHW: pixels a tile (one 64-byte line of float32 per map)
constexpr int64_t GRAIN = 1 << 14;     // elements below which at::parallel_for keeps a range on one thread

INLINE float to_float(float v) { return v; }
INLINE float to_float(c10::BFloat16 v) {
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

INLINE void from_float(float v, float* out) { *out = v; }
INLINE void from_float(float v, c10::BFloat16* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  uint16_t rounded = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  out->x = (bits & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>((bits >> 16) | 0x40u) : rounded;  // NaN stays NaN
}

// Float32 buffers for a block of the tensor, laid out so that the maps of one window are STRIDE floats
// apart and every loop below runs over `count` contiguous floats, however few maps a group has:
//   channels_last: P pixels by `groups` rows of [half zeros | n maps | half zeros], STRIDE 1 (the zeros
//     between rows stop every window at its group's first and last map);
//   NCHW: one group's n maps by TILE pixels, [map][pixel], STRIDE TILE.
// `squares` (a^2, written by the loads) and `terms` (the backward's g a s^(-beta-1)) have half * STRIDE
// zeros of margin before and after their count floats.
struct Tile {
  std::vector<float> a, g, squares, terms, inv, out;
  Tile(int64_t count, int64_t margin)
      : a(count, 0.0f), g(count, 0.0f), squares(count + 2 * margin, 0.0f), terms(count + 2 * margin, 0.0f),
        inv(count), out(count) {}
};

// The sum of padded[i + d * STRIDE], d = 0 .. 2 half: map i's window. HALF >= 0 fixes half at compile
// time (the paper's n = 5), so that the sum unrolls inside the loops that use it, the layer's passes
// over its buffers fused into one forward and two backward; HALF < 0 takes `half`.
template <int64_t STRIDE, int64_t HALF>
INLINE float window(const float* __restrict padded, int64_t i, int64_t half) {
  const int64_t h = HALF >= 0 ? HALF : half;
  float sum = padded[i];
  for (int64_t d = 1; d <= 2 * h; d++) sum += padded[i + d * STRIDE];
  return sum;
}

// The LRN of t.a into t.out (BACKWARD false), or the gradient for t.g into t.out:
//   dx_j = g_j inv_j - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i s_i^(-beta-1),
// s = k + alpha * window sum of a^2, inv = s^-beta (the window is symmetric, so the sum over the i
// whose window holds j is the same window sum). For beta = 3/4 (the paper's) s^-3/4 = 1 / (r sqrt(r)),
// r = sqrt(s): square roots and a division vectorise, pow does not. In the channels_last layout the
// loops also run over the zeros between rows: 2 half of them, so that no window of half either side
// holds maps of two rows, and the terms there (of one row's maps at most) reach no other row's maps.
template <bool BACKWARD, int64_t STRIDE, int64_t HALF>
INLINE void tile_math(Tile& t, int64_t count, int64_t half, float alpha, float beta, float k) {
  const float *__restrict a = t.a.data(), *__restrict g = t.g.data(), *__restrict squares = t.squares.data();
  float *__restrict inv = t.inv.data(), *__restrict out = t.out.data();
  float* __restrict terms = t.terms.data() + half * STRIDE;
  const bool paper = beta == 0.75f;
  if (!BACKWARD && paper) {
    for (int64_t i = 0; i < count; i++) {
      const float s = k + alpha * window<STRIDE, HALF>(squares, i, half), r = std::sqrt(s);
      out[i] = a[i] * (1.0f / (r * std::sqrt(r)));
    }
  } else if (!BACKWARD) {
    for (int64_t i = 0; i < count; i++) out[i] = a[i] * std::pow(k + alpha * window<STRIDE, HALF>(squares, i, half), -beta);
  }
  if (!BACKWARD) return;
  if (paper) {  // one division: d = s^-7/4, inv = s d
    for (int64_t i = 0; i < count; i++) {
      const float s = k + alpha * window<STRIDE, HALF>(squares, i, half), r = std::sqrt(s);
      const float d = 1.0f / (s * (r * std::sqrt(r)));
      inv[i] = s * d;
      terms[i] = g[i] * a[i] * d;
    }
  } else {
    for (int64_t i = 0; i < count; i++) {
      const float s = k + alpha * window<STRIDE, HALF>(squares, i, half);
      inv[i] = std::pow(s, -beta);
      terms[i] = g[i] * a[i] * (inv[i] / s);
    }
  }
  const float w = -2.0f * alpha * beta, *__restrict padded_terms = t.terms.data();
  for (int64_t i = 0; i < count; i++) out[i] = g[i] * inv[i] + w * a[i] * window<STRIDE, HALF>(padded_terms, i, half);
}

// Asks for the cache lines of p[0, count) ahead of their use (the loads below would otherwise wait
// for memory with no arithmetic to overlap).
template <typename T>
INLINE void prefetch(const T* p, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < count * static_cast<int64_t>(sizeof(T)); i += 64) __builtin_prefetch(bytes + i);
}

constexpr int64_t ROW_TILE = 384;  // floats a channels_last tile holds: its six buffers stay in L1 (measured best of 128-8192)

// Pixels [begin, end) of a channels_last tensor, P at a time: y = the LRN of x, or (BACKWARD) the gradient.
template <bool BACKWARD, int64_t HALF, typename T>
INLINE void rows(const T* x, const T* grad, T* y, int64_t begin, int64_t end, int64_t maps, int64_t groups,
                 int64_t size, float alpha, float beta, float k) {
  const int64_t n = maps / groups, half = size / 2, row = n + 2 * half;
  const int64_t per_tile = std::max<int64_t>(1, ROW_TILE / (groups * row));
  Tile t(per_tile * groups * row, half);
  for (int64_t first = begin; first < end; first += per_tile) {
    const int64_t pixels = std::min(per_tile, end - first);
    for (int64_t r = 0; r < pixels * groups; r++) {
      const int64_t at = first * maps + r * n;  // row r: pixel r / groups, group r % groups
      float *__restrict a = t.a.data() + r * row + half, *__restrict sq = t.squares.data() + r * row + 2 * half;
      for (int64_t m = 0; m < n; m++) {
        a[m] = to_float(x[at + m]);
        sq[m] = a[m] * a[m];
      }
      if (BACKWARD)
        for (int64_t m = 0; m < n; m++) t.g[r * row + half + m] = to_float(grad[at + m]);
    }
    prefetch(x + (first + pixels) * maps, std::min(per_tile, end - first - pixels) * maps);  // the next tile's,
    if (BACKWARD) prefetch(grad + (first + pixels) * maps, std::min(per_tile, end - first - pixels) * maps);
    tile_math<BACKWARD, 1, HALF>(t, pixels * groups * row, half, alpha, beta, k);  // while this runs
    for (int64_t r = 0; r < pixels * groups; r++)
      for (int64_t m = 0; m < n; m++) from_float(t.out[r * row + half + m], y + first * maps + r * n + m);
  }
}

// One group's n maps by TILE pixels from base[m * pixels + l] into out[m * TILE + l]; of the last
// tile of an image only `valid` pixels (the rest zeros).
template <typename T>
INLINE void load_lanes(const T* base, int64_t pixels, int64_t n, int64_t valid, float* __restrict out,
                       float* __restrict squares) {
  if (valid == TILE) {
    for (int64_t m = 0; m < n; m++)
      for (int64_t l = 0; l < TILE; l++) out[m * TILE + l] = to_float(base[m * pixels + l]);
  } else {
    for (int64_t m = 0; m < n; m++)
      for (int64_t l = 0; l < TILE; l++) out[m * TILE + l] = l < valid ? to_float(base[m * pixels + l]) : 0.0f;
  }
  for (int64_t i = 0; squares && i < n * TILE; i++) squares[i] = out[i] * out[i];
}

// Tiles [begin, end) of a contiguous (NCHW) tensor, each TILE pixels of one image (its last shorter),
// a group at a time: y = the LRN of x, or (BACKWARD) the gradient.
template <bool BACKWARD, int64_t HALF, typename T>
INLINE void lanes(const T* x, const T* grad, T* y, int64_t begin, int64_t end, int64_t maps, int64_t pixels,
                  int64_t groups, int64_t size, float alpha, float beta, float k) {
  const int64_t n = maps / groups, half = size / 2, tiles = (pixels + TILE - 1) / TILE;
  Tile t(n * TILE, half * TILE);
  for (int64_t i = begin; i < end; i++) {
    const int64_t first = (i % tiles) * TILE, valid = std::min(TILE, pixels - first);
    for (int64_t q = 0; q < groups; q++) {
      const int64_t at = (i / tiles) * maps * pixels + q * n * pixels + first;
      load_lanes(x + at, pixels, n, valid, t.a.data(), t.squares.data() + half * TILE);
      if (BACKWARD) load_lanes(grad + at, pixels, n, valid, t.g.data(), nullptr);
      tile_math<BACKWARD, TILE, HALF>(t, n * TILE, half, alpha, beta, k);
      for (int64_t m = 0; m < n; m++)
        for (int64_t l = 0; l < valid; l++) from_float(t.out[m * TILE + l], y + at + m * pixels + l);
    }
  }
}

// One function per dtype, cloned for AVX-512, AVX2 and the baseline, everything above inlined into it;
// the paper's window (n = 5) compiled apart. [begin, end) counts pixels (channels_last) or tiles (NCHW).
template <bool BACKWARD, int64_t HALF, typename T>
INLINE void any_layout(const T* x, const T* grad, T* y, int64_t begin, int64_t end, bool channels_last,
                       int64_t maps, int64_t pixels, int64_t groups, int64_t size, float alpha, float beta, float k) {
  if (channels_last)
    rows<BACKWARD, HALF>(x, grad, y, begin, end, maps, groups, size, alpha, beta, k);
  else
    lanes<BACKWARD, HALF>(x, grad, y, begin, end, maps, pixels, groups, size, alpha, beta, k);
}

#define STEPS(NAME, T)                                                                                            \
  CLONES void NAME(const T* x, const T* grad, T* y, int64_t begin, int64_t end, bool channels_last, int64_t maps, \
                   int64_t pixels, int64_t groups, int64_t size, float alpha, float beta, float k) {             \
    if (grad && size == 5) any_layout<true, 2>(x, grad, y, begin, end, channels_last, maps, pixels, groups, size, alpha, beta, k); \
    else if (grad) any_layout<true, -1>(x, grad, y, begin, end, channels_last, maps, pixels, groups, size, alpha, beta, k);       \
    else if (size == 5) any_layout<false, 2>(x, grad, y, begin, end, channels_last, maps, pixels, groups, size, alpha, beta, k); \
    else any_layout<false, -1>(x, grad, y, begin, end, channels_last, maps, pixels, groups, size, alpha, beta, k);               \
  }
STEPS(steps_float, float)
STEPS(steps_bf16, c10::BFloat16)
#undef STEPS

inline void run_steps(const float* x, const float* g, float* y, int64_t b, int64_t e, bool cl, int64_t c,
                      int64_t p, int64_t q, int64_t size, float alpha, float beta, float k) {
  steps_float(x, g, y, b, e, cl, c, p, q, size, alpha, beta, k);
}
inline void run_steps(const c10::BFloat16* x, const c10::BFloat16* g, c10::BFloat16* y, int64_t b, int64_t e,
                      bool cl, int64_t c, int64_t p, int64_t q, int64_t size, float alpha, float beta, float k) {
  steps_bf16(x, g, y, b, e, cl, c, p, q, size, alpha, beta, k);
}

void check(const at::Tensor& x, int64_t size, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet::lrn: a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "alexnet::lrn: float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, "alexnet::lrn: (B, C, H, W) maps, got ", x.dim(), " dimensions");
  TORCH_CHECK(size >= 1 && size % 2 == 1, "alexnet::lrn: an odd window size, got ", size);
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0, "alexnet::lrn: ", x.size(1), " maps do not split into ",
              groups, " groups");
}

bool is_channels_last(const at::Tensor& x) { return x.is_contiguous(at::MemoryFormat::ChannelsLast); }

template <typename T>
void run(const at::Tensor& x, const at::Tensor* grad, at::Tensor& y, int64_t count, int64_t per_step,
         bool channels_last, int64_t size, double alpha, double beta, double k, int64_t groups) {
  const T* xp = x.const_data_ptr<T>();
  const T* gp = grad ? grad->const_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();
  const int64_t maps = x.size(1), pixels = x.size(2) * x.size(3);
  at::parallel_for(0, count, std::max<int64_t>(1, GRAIN / per_step), [&](int64_t b, int64_t e) {
    run_steps(xp, gp, yp, b, e, channels_last, maps, pixels, groups, size, alpha, beta, k);
  });
}

// y = the LRN of x, or (grad given) the gradient with respect to x of the LRN at x.
at::Tensor compute(const at::Tensor& input, const at::Tensor* grad_in, int64_t size, double alpha, double beta,
                   double k, int64_t groups) {
  check(input, size, groups);
  const bool channels_last = is_channels_last(input);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  at::Tensor grad;
  if (grad_in != nullptr) {
    TORCH_CHECK(grad_in->sizes() == input.sizes() && grad_in->scalar_type() == input.scalar_type(),
                "alexnet::lrn_backward: grad and x differ in shape or dtype");
    grad = grad_in->contiguous(format);
  }
  at::Tensor y = at::empty_like(x);
  const int64_t batch = x.size(0), maps = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t count = channels_last ? batch * pixels : batch * ((pixels + TILE - 1) / TILE);
  const int64_t per_step = channels_last ? maps : maps * TILE;
  if (x.numel() == 0) return y;
  if (x.scalar_type() == at::kFloat)
    run<float>(x, grad_in ? &grad : nullptr, y, count, per_step, channels_last, size, alpha, beta, k, groups);
  else
    run<c10::BFloat16>(x, grad_in ? &grad : nullptr, y, count, per_step, channels_last, size, alpha, beta, k, groups);
  return y;
}

at::Tensor lrn(const at::Tensor& x, int64_t size, double alpha, double beta, double k, int64_t groups) {
  return compute(x, nullptr, size, alpha, beta, k, groups);
}

at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& x, int64_t size, double alpha, double beta,
                        double k, int64_t groups) {
  return compute(x, &grad, size, alpha, beta, k, groups);
}

}  // namespace

TORCH_LIBRARY(alexnet, m) {
  m.def("lrn(Tensor x, int size, float alpha, float beta, float k, int groups) -> Tensor");
  m.def("lrn_backward(Tensor grad, Tensor x, int size, float alpha, float beta, float k, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet, CPU, m) {
  m.impl("lrn", &lrn);
  m.impl("lrn_backward", &lrn_backward);
}
