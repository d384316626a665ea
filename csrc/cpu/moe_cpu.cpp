// CPU kernels of the minimoe ops: a serial counting sort for the permutation (O(T*K), stable),
// parallel row gathers and weighted combines with at::parallel_for, and one ATen matmul per
// expert for the grouped matmul. Sums accumulate in at::opmath_type: float32 for
// float16/bfloat16/float32, float64 for float64.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../checks.h"

namespace minimoe {
namespace {

constexpr int64_t kGrain = 64;  // rows per parallel task: enough work to amortise a thread
constexpr int kLanes = 8;       // partial sums per dot product (hides the add latency)

// The row of each slot (the inverse of the permutation `slots`).
std::vector<int64_t> rows_of_slots(const at::Tensor& slots) {
  const int64_t N = slots.size(0);
  const int64_t* s = slots.data_ptr<int64_t>();
  std::vector<int64_t> row(N);
  for (int64_t n = 0; n < N; ++n) row[s[n]] = n;
  return row;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_cpu(const at::Tensor& x,
                                                            const at::Tensor& expert_ids,
                                                            int64_t num_experts) {
  check_permute(x, expert_ids, num_experts);
  const int64_t T = expert_ids.size(0), K = expert_ids.size(1), N = T * K, D = x.size(1);
  const int64_t* ids = expert_ids.data_ptr<int64_t>();
  // Counting sort: histogram, exclusive prefix sum, then a stable scatter in slot order.
  auto offsets = at::zeros({num_experts + 1}, expert_ids.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) off[ids[n] + 1] += 1;
  for (int64_t e = 0; e < num_experts; ++e) off[e + 1] += off[e];
  auto slots = at::empty({N}, expert_ids.options());
  int64_t* s = slots.data_ptr<int64_t>();
  std::vector<int64_t> cursor(off, off + num_experts);
  for (int64_t n = 0; n < N; ++n) s[cursor[ids[n]]++] = n;
  // Gather the token rows: row n is token s[n] / K (a byte copy works for every dtype).
  auto rows = at::empty({N, D}, x.options());
  const int64_t row_bytes = D * x.element_size();
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(rows.data_ptr());
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      std::memcpy(dst + n * row_bytes, src + (s[n] / K) * row_bytes, row_bytes);
    }
  });
  return {rows, slots, offsets};
}

at::Tensor unpermute_cpu(const at::Tensor& y, const at::Tensor& slots, const at::Tensor& weights) {
  check_unpermute(y, slots, weights);
  const int64_t T = weights.size(0), K = weights.size(1), D = y.size(1);
  auto out = at::empty({T, D}, y.options());
  auto row = rows_of_slots(slots);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_cpu", [&] {
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = weights.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, T, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(D);
      for (int64_t t = begin; t < end; ++t) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const acc_t w = static_cast<acc_t>(wp[t * K + k]);
          const scalar_t* r = yp + row[t * K + k] * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<acc_t>(r[d]);
        }
        for (int64_t d = 0; d < D; ++d) op[t * D + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cpu(const at::Tensor& grad,
                                                          const at::Tensor& y,
                                                          const at::Tensor& slots,
                                                          const at::Tensor& weights) {
  check_unpermute_backward(grad, y, slots, weights);
  const int64_t N = y.size(0), K = weights.size(1), D = y.size(1);
  auto grad_y = at::empty_like(y);
  auto grad_w = at::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_bwd_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = weights.data_ptr<scalar_t>();
    const int64_t* s = slots.data_ptr<int64_t>();
    scalar_t* gy = grad_y.data_ptr<scalar_t>();
    scalar_t* gw = grad_w.data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    // Row n came from slot s[n] = t*K + k: d y_TD[t] / d row = weight, d / d weight = row.
    at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t slot = s[n], t = slot / K;
        const acc_t w = static_cast<acc_t>(wp[slot]);
        const scalar_t* gt = g + t * D;
        const scalar_t* yn = yp + n * D;
        scalar_t* gyn = gy + n * D;
        // One pass over the row; kLanes independent partial sums, since a single running sum
        // would wait on every addition.
        acc_t part[kLanes] = {};
        int64_t d = 0;
        for (; d + kLanes <= D; d += kLanes) {
          for (int j = 0; j < kLanes; ++j) {
            const acc_t gd = static_cast<acc_t>(gt[d + j]);
            gyn[d + j] = static_cast<scalar_t>(w * gd);
            part[j] += gd * static_cast<acc_t>(yn[d + j]);
          }
        }
        for (; d < D; ++d) {
          const acc_t gd = static_cast<acc_t>(gt[d]);
          gyn[d] = static_cast<scalar_t>(w * gd);
          part[0] += gd * static_cast<acc_t>(yn[d]);
        }
        acc_t dot = 0;
        for (int j = 0; j < kLanes; ++j) dot += part[j];
        gw[slot] = static_cast<scalar_t>(dot);
      }
    });
  });
  return {grad_y, grad_w};
}

at::Tensor grouped_mm_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets) {
  check_grouped_mm(x, w, offsets);
  auto out = at::empty({x.size(0), w.size(2)}, x.options());
  const int64_t* o = offsets.data_ptr<int64_t>();
  // Experts in parallel, each GEMM on one thread: small GEMMs gain little from threads.
  at::parallel_for(0, w.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t rows = o[e + 1] - o[e];
      if (rows == 0) continue;  // an expert without tokens: nothing to do
      auto out_e = out.narrow(0, o[e], rows);
      at::mm_out(out_e, x.narrow(0, o[e], rows), w[e]);
    }
  });
  return out;
}

at::Tensor grouped_mm_wgrad_cpu(const at::Tensor& x, const at::Tensor& grad,
                                const at::Tensor& offsets) {
  check_wgrad(x, grad, offsets);
  const int64_t E = offsets.size(0) - 1;
  auto grad_w = at::empty({E, x.size(1), grad.size(1)}, x.options());
  const int64_t* o = offsets.data_ptr<int64_t>();
  at::parallel_for(0, E, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t rows = o[e + 1] - o[e];
      auto gw_e = grad_w[e];
      if (rows == 0) {  // an expert without tokens gets no gradient
        gw_e.zero_();
        continue;
      }
      at::mm_out(gw_e, x.narrow(0, o[e], rows).t(), grad.narrow(0, o[e], rows));
    }
  });
  return grad_w;
}

}  // namespace

TORCH_LIBRARY_IMPL(minimoe, CPU, m) {
  m.impl("permute", &permute_cpu);
  m.impl("unpermute", &unpermute_cpu);
  m.impl("unpermute_backward", &unpermute_backward_cpu);
  m.impl("grouped_mm", &grouped_mm_cpu);
  m.impl("grouped_mm_wgrad", &grouped_mm_wgrad_cpu);
}

}  // namespace minimoe
