// CUDA kernels of the minimoe ops, written to be read. All launches go on the current stream.
//
// permute: a stable counting sort in three small kernels (per-chunk histogram -> one thread
//   per expert turns the counts into write cursors -> every chunk scatters its slots in
//   order), then one block per row copies the token's features.
// unpermute: one block per token sums its K weighted rows in float32 (the combine is fused
//   into the un-permutation). Its backward: one block per row.
// Sums accumulate in at::opmath_type (float32 for float16/bfloat16/float32, float64 for float64).
// grouped_mm / grouped_mm_wgrad: 32 x 32 shared-memory tiles with float32 accumulation. The
//   row tiles of every expert are listed on the host from the offsets (the "tile schedule"),
//   so one launch covers all experts and an empty expert costs nothing. For float16 and
//   bfloat16 on sm_80+ the forward grouped matmul (and with it the input gradient) runs on
//   tensor cores instead: 64 x 64 output tiles, four warps of 2 x 2 WMMA 16x16x16 fragments,
//   operands staged (zero-padded at expert and matrix edges) through shared memory.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // (not ATen/cuda/CUDAContext.h: it needs the cuSPARSE headers)
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <vector>

#include "../checks.h"

namespace minimoe {
namespace {

constexpr int64_t kChunk = 32;       // slots per thread in the counting sort
constexpr int kMaxExperts = 1024;    // the cursor kernel runs one thread per expert
constexpr int kThreads = 256;        // threads per block of the row kernels (a power of two)
constexpr int kTile = 32;            // tile side of the grouped matmuls
constexpr int kTileRows = 8;         // thread rows per tile: each thread computes 4 outputs
constexpr int kPerThread = kTile / kTileRows;

int64_t blocks_for(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

// --- permute ---------------------------------------------------------------------------------

__global__ void chunk_histogram(const int64_t* ids, int64_t N, int64_t E, int64_t* counts) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t begin = c * kChunk;
  if (begin >= N) return;
  const int64_t end = min(begin + kChunk, N);
  for (int64_t n = begin; n < end; ++n) counts[c * E + ids[n]] += 1;  // this thread's own row
}

// counts[c][e] (slots of chunk c for expert e) -> the row where chunk c writes its first slot
// of expert e; offsets[e] = first row of expert e.
__global__ void chunk_cursors(int64_t* counts, int64_t chunks, int64_t E, int64_t* offsets) {
  __shared__ int64_t totals[kMaxExperts];
  const int e = threadIdx.x;
  if (e < E) {
    int64_t sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += counts[c * E + e];
    totals[e] = sum;
  }
  __syncthreads();
  if (e == 0) {  // E is small: a serial exclusive scan is the clearest
    offsets[0] = 0;
    for (int64_t i = 0; i < E; ++i) offsets[i + 1] = offsets[i] + totals[i];
  }
  __syncthreads();
  if (e < E) {
    int64_t cursor = offsets[e];
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t mine = counts[c * E + e];
      counts[c * E + e] = cursor;
      cursor += mine;
    }
  }
}

__global__ void chunk_scatter(const int64_t* ids, int64_t N, int64_t E, int64_t* cursors,
                              int64_t* slots) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t begin = c * kChunk;
  if (begin >= N) return;
  const int64_t end = min(begin + kChunk, N);
  for (int64_t n = begin; n < end; ++n) slots[cursors[c * E + ids[n]]++] = n;  // in slot order
}

template <typename scalar_t>
__global__ void gather_rows(const scalar_t* x, const int64_t* slots, int64_t K, int64_t D,
                            scalar_t* rows) {
  const int64_t n = blockIdx.x;
  const scalar_t* src = x + (slots[n] / K) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) rows[n * D + d] = src[d];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_cuda(const at::Tensor& x,
                                                             const at::Tensor& expert_ids,
                                                             int64_t num_experts) {
  check_permute(x, expert_ids, num_experts);
  TORCH_CHECK(num_experts <= kMaxExperts, "permute: at most ", kMaxExperts, " experts on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t T = expert_ids.size(0), K = expert_ids.size(1), N = T * K, D = x.size(1);
  const int64_t chunks = blocks_for(N, kChunk);
  auto counts = at::zeros({std::max<int64_t>(chunks, 1), num_experts}, expert_ids.options());
  auto offsets = at::empty({num_experts + 1}, expert_ids.options());
  auto slots = at::empty({N}, expert_ids.options());
  auto rows = at::empty({N, D}, x.options());
  const int64_t* ids = expert_ids.data_ptr<int64_t>();
  const int64_t grid = blocks_for(std::max<int64_t>(chunks, 1), kThreads);
  chunk_histogram<<<grid, kThreads, 0, stream>>>(ids, N, num_experts, counts.data_ptr<int64_t>());
  chunk_cursors<<<1, num_experts, 0, stream>>>(counts.data_ptr<int64_t>(), chunks, num_experts,
                                               offsets.data_ptr<int64_t>());
  chunk_scatter<<<grid, kThreads, 0, stream>>>(ids, N, num_experts, counts.data_ptr<int64_t>(),
                                               slots.data_ptr<int64_t>());
  if (N > 0 && D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "permute_cuda", [&] {
      gather_rows<scalar_t><<<N, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), slots.data_ptr<int64_t>(), K, D, rows.data_ptr<scalar_t>());
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows, slots, offsets};
}

// --- unpermute -------------------------------------------------------------------------------

__global__ void invert_slots(const int64_t* slots, int64_t N, int64_t* row_of_slot) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (n < N) row_of_slot[slots[n]] = n;
}

template <typename scalar_t>
__global__ void weighted_combine(const scalar_t* y, const int64_t* row_of_slot, const scalar_t* w,
                                 int64_t K, int64_t D, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      acc += static_cast<acc_t>(w[t * K + k]) *
             static_cast<acc_t>(y[row_of_slot[t * K + k] * D + d]);
    }
    out[t * D + d] = static_cast<scalar_t>(acc);
  }
}

at::Tensor unpermute_cuda(const at::Tensor& y, const at::Tensor& slots, const at::Tensor& weights) {
  check_unpermute(y, slots, weights);
  const c10::cuda::CUDAGuard guard(y.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = y.size(0), T = weights.size(0), K = weights.size(1), D = y.size(1);
  auto out = at::empty({T, D}, y.options());
  if (N == 0 || D == 0) return out.zero_();
  auto row_of_slot = at::empty_like(slots);
  invert_slots<<<blocks_for(N, kThreads), kThreads, 0, stream>>>(
      slots.data_ptr<int64_t>(), N, row_of_slot.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_cuda", [&] {
    weighted_combine<scalar_t><<<T, kThreads, 0, stream>>>(
        y.data_ptr<scalar_t>(), row_of_slot.data_ptr<int64_t>(), weights.data_ptr<scalar_t>(), K,
        D, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Row n came from slot s = t*K + k: grad_y[n] = w[s] * grad[t], grad_w[s] = <grad[t], y[n]>.
template <typename scalar_t>
__global__ void combine_backward(const scalar_t* grad, const scalar_t* y, const int64_t* slots,
                                 const scalar_t* w, int64_t K, int64_t D, scalar_t* grad_y,
                                 scalar_t* grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t n = blockIdx.x, slot = slots[n], t = slot / K;
  const acc_t wn = static_cast<acc_t>(w[slot]);
  acc_t dot = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[t * D + d]);
    grad_y[n * D + d] = static_cast<scalar_t>(wn * g);
    dot += g * static_cast<acc_t>(y[n * D + d]);
  }
  partial[threadIdx.x] = dot;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {  // tree sum over the block
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_w[slot] = static_cast<scalar_t>(partial[0]);
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cuda(const at::Tensor& grad,
                                                           const at::Tensor& y,
                                                           const at::Tensor& slots,
                                                           const at::Tensor& weights) {
  check_unpermute_backward(grad, y, slots, weights);
  const c10::cuda::CUDAGuard guard(y.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = y.size(0), K = weights.size(1), D = y.size(1);
  auto grad_y = at::empty_like(y);
  auto grad_w = at::zeros_like(weights);
  if (N == 0) return {grad_y, grad_w};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_bwd_cuda", [&] {
    combine_backward<scalar_t><<<N, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), slots.data_ptr<int64_t>(),
        weights.data_ptr<scalar_t>(), K, D, grad_y.data_ptr<scalar_t>(),
        grad_w.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_y, grad_w};
}

// --- grouped matmul --------------------------------------------------------------------------

// Tile t covers rows tiles[2t+1] .. +kTile (clipped to its expert) of expert tiles[2t].
template <typename scalar_t>
__global__ void grouped_mm_tiles(const scalar_t* x, const scalar_t* w, const int64_t* offsets,
                                 const int64_t* tiles, int64_t D, int64_t H, scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t xs[kTile][kTile];      // rows x depth
  __shared__ acc_t ws[kTile][kTile + 1];  // depth x columns (+1 avoids bank conflicts)
  const int64_t e = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t row_end = offsets[e + 1], col0 = (int64_t)blockIdx.y * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const scalar_t* we = w + e * D * H;
  acc_t acc[kPerThread] = {0};
  for (int64_t k0 = 0; k0 < D; k0 += kTile) {
    for (int i = ty; i < kTile; i += kTileRows) {
      const int64_t r = row0 + i, k = k0 + tx, kk = k0 + i, c = col0 + tx;
      xs[i][tx] = (r < row_end && k < D) ? static_cast<acc_t>(x[r * D + k]) : acc_t(0);
      ws[i][tx] = (kk < D && c < H) ? static_cast<acc_t>(we[kk * H + c]) : acc_t(0);
    }
    __syncthreads();
    for (int k = 0; k < kTile; ++k) {
      const acc_t b = ws[k][tx];
      for (int j = 0; j < kPerThread; ++j) acc[j] += xs[ty + kTileRows * j][k] * b;
    }
    __syncthreads();
  }
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t r = row0 + ty + kTileRows * j, c = col0 + tx;
    if (r < row_end && c < H) y[r * H + c] = static_cast<scalar_t>(acc[j]);
  }
}

// grad_w[e][d][h] = sum over expert e's rows r of x[r][d] * grad[r][h].
template <typename scalar_t>
__global__ void grouped_wgrad_tiles(const scalar_t* x, const scalar_t* grad,
                                    const int64_t* offsets, int64_t D, int64_t H,
                                    scalar_t* grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t xs[kTile][kTile + 1];  // rows x d
  __shared__ acc_t gs[kTile][kTile + 1];  // rows x h
  const int64_t e = blockIdx.z, d0 = (int64_t)blockIdx.y * kTile, h0 = (int64_t)blockIdx.x * kTile;
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  acc_t acc[kPerThread] = {0};
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kTile) {
    for (int i = ty; i < kTile; i += kTileRows) {
      const int64_t r = r0 + i;
      xs[i][tx] = (r < r_end && d0 + tx < D) ? static_cast<acc_t>(x[r * D + d0 + tx]) : acc_t(0);
      gs[i][tx] = (r < r_end && h0 + tx < H) ? static_cast<acc_t>(grad[r * H + h0 + tx]) : acc_t(0);
    }
    __syncthreads();
    for (int i = 0; i < kTile; ++i) {
      const acc_t b = gs[i][tx];
      for (int j = 0; j < kPerThread; ++j) acc[j] += xs[i][ty + kTileRows * j] * b;
    }
    __syncthreads();
  }
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t d = d0 + ty + kTileRows * j, h = h0 + tx;
    if (d < D && h < H) grad_w[(e * D + d) * H + h] = static_cast<scalar_t>(acc[j]);
  }
}

// (expert, first row) of every `height`-row tile of every non-empty expert, on the device.
at::Tensor tile_schedule(const at::Tensor& offsets, int64_t height) {
  auto host = offsets.cpu();
  const int64_t* o = host.data_ptr<int64_t>();
  std::vector<int64_t> tiles;
  for (int64_t e = 0; e + 1 < offsets.size(0); ++e) {
    for (int64_t r = o[e]; r < o[e + 1]; r += height) {
      tiles.push_back(e);
      tiles.push_back(r);
    }
  }
  return at::tensor(tiles, host.options()).to(offsets.device(), /*non_blocking=*/false);
}

// --- grouped matmul on tensor cores (float16 / bfloat16) --------------------------------------

constexpr int kMmaM = 64, kMmaN = 64, kMmaK = 16;  // block tile; WMMA fragments are 16x16x16
constexpr int kMmaWarps = 4;                       // 2 x 2 warps, each a 32 x 32 sub-tile
constexpr int kPad = 8;                            // shared-row padding (keeps 32-byte alignment)

template <typename T> __device__ T from_float(float v);
template <> __device__ __half from_float<__half>(float v) { return __float2half(v); }
template <> __device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T>
__global__ void grouped_mm_wmma(const T* x, const T* w, const int64_t* offsets,
                                const int64_t* tiles, int64_t D, int64_t H, T* y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) T xs[kMmaM][kMmaK + kPad];
  __shared__ __align__(32) T ws[kMmaK][kMmaN + kPad];
  __shared__ __align__(32) float out[kMmaM][kMmaN + 4];
  const int64_t e = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t row_end = offsets[e + 1], col0 = (int64_t)blockIdx.y * kMmaN;
  const T* we = w + e * D * H;
  const int tid = threadIdx.x, warp = tid / 32, wr = warp / 2, wc = warp % 2;
  const T zero = from_float<T>(0.f);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  for (int64_t k0 = 0; k0 < D; k0 += kMmaK) {
    for (int i = tid; i < kMmaM * kMmaK; i += blockDim.x) {  // rows beyond the expert: zeros
      const int r = i / kMmaK, k = i % kMmaK;
      const int64_t gr = row0 + r, gk = k0 + k;
      xs[r][k] = (gr < row_end && gk < D) ? x[gr * D + gk] : zero;
    }
    for (int i = tid; i < kMmaK * kMmaN; i += blockDim.x) {
      const int k = i / kMmaN, c = i % kMmaN;
      const int64_t gk = k0 + k, gc = col0 + c;
      ws[k][c] = (gk < D && gc < H) ? we[gk * H + gc] : zero;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[2];
    for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &xs[32 * wr + 16 * i][0], kMmaK + kPad);
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &ws[0][32 * wc + 16 * j], kMmaN + kPad);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&out[32 * wr + 16 * i][32 * wc + 16 * j], acc[i][j], kMmaN + 4,
                              wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < kMmaM * kMmaN; i += blockDim.x) {  // only rows of this expert
    const int r = i / kMmaN, c = i % kMmaN;
    const int64_t gr = row0 + r, gc = col0 + c;
    if (gr < row_end && gc < H) y[gr * H + gc] = from_float<T>(out[r][c]);
  }
#endif
}

bool tensor_cores(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf && x.scalar_type() != at::kBFloat16) return false;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                        x.device().index()));
  return major >= 8;
}

template <typename T>
void launch_wmma(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets,
                 at::Tensor& y, cudaStream_t stream) {
  auto tiles = tile_schedule(offsets, kMmaM);
  const int64_t n_tiles = tiles.numel() / 2, H = w.size(2);
  if (n_tiles == 0 || H == 0) return;
  const dim3 grid(n_tiles, blocks_for(H, kMmaN));
  grouped_mm_wmma<T><<<grid, 32 * kMmaWarps, 0, stream>>>(
      reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(w.data_ptr()),
      offsets.data_ptr<int64_t>(), tiles.data_ptr<int64_t>(), x.size(1), H,
      reinterpret_cast<T*>(y.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor grouped_mm_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets) {
  check_grouped_mm(x, w, offsets);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t D = x.size(1), H = w.size(2);
  auto y = at::empty({x.size(0), H}, x.options());
  if (tensor_cores(x)) {
    if (x.scalar_type() == at::kHalf) launch_wmma<__half>(x, w, offsets, y, stream);
    else launch_wmma<__nv_bfloat16>(x, w, offsets, y, stream);
    return y;
  }
  auto tiles = tile_schedule(offsets, kTile);
  const int64_t n_tiles = tiles.numel() / 2;
  if (n_tiles == 0 || H == 0) return y;
  const dim3 grid(n_tiles, blocks_for(H, kTile)), block(kTile, kTileRows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "grouped_mm_cuda", [&] {
    grouped_mm_tiles<scalar_t><<<grid, block, 0, stream>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(),
        tiles.data_ptr<int64_t>(), D, H, y.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor grouped_mm_wgrad_cuda(const at::Tensor& x, const at::Tensor& grad,
                                 const at::Tensor& offsets) {
  check_wgrad(x, grad, offsets);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t E = offsets.size(0) - 1, D = x.size(1), H = grad.size(1);
  auto grad_w = at::empty({E, D, H}, x.options());
  if (E == 0 || D == 0 || H == 0) return grad_w;
  const dim3 grid(blocks_for(H, kTile), blocks_for(D, kTile), E), block(kTile, kTileRows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "grouped_wgrad_cuda", [&] {
    grouped_wgrad_tiles<scalar_t><<<grid, block, 0, stream>>>(
        x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(), D, H,
        grad_w.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_w;
}

}  // namespace

TORCH_LIBRARY_IMPL(minimoe, CUDA, m) {
  m.impl("permute", &permute_cuda);
  m.impl("unpermute", &unpermute_cuda);
  m.impl("unpermute_backward", &unpermute_backward_cuda);
  m.impl("grouped_mm", &grouped_mm_cuda);
  m.impl("grouped_mm_wgrad", &grouped_mm_wgrad_cuda);
}

}  // namespace minimoe
