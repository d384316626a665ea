// Input checks shared by the CPU and CUDA kernels: every op validates what it is given and
// says what it expected (a RuntimeError in Python).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace minimoe {

inline void check_2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.device() == b.device(), what, ": tensors on ", a.device(), " and ", b.device(),
              "; move them to one device");
}

inline void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be floating point, got ",
              t.scalar_type());
}

inline void check_permute(const at::Tensor& x, const at::Tensor& ids, int64_t num_experts) {
  check_2d(x, "permute: x");
  check_2d(ids, "permute: expert_ids");
  check_index(ids, "permute: expert_ids");
  check_same_device(x, ids, "permute");
  TORCH_CHECK(x.size(0) == ids.size(0), "permute: x has ", x.size(0), " tokens but expert_ids ",
              ids.size(0));
  TORCH_CHECK(num_experts > 0, "permute: num_experts must be > 0, got ", num_experts);
  if (ids.numel() > 0) {
    TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < num_experts,
                "permute: expert ids must lie in [0, ", num_experts, "), got [",
                ids.min().item<int64_t>(), ", ", ids.max().item<int64_t>(), "]");
  }
}

inline void check_unpermute(const at::Tensor& y, const at::Tensor& slots, const at::Tensor& w) {
  check_2d(y, "unpermute: y");
  check_2d(w, "unpermute: weights");
  check_index(slots, "unpermute: slots");
  check_float(y, "unpermute: y");
  TORCH_CHECK(w.scalar_type() == y.scalar_type(), "unpermute: weights are ", w.scalar_type(),
              " but y is ", y.scalar_type(), "; cast the weights to y's dtype");
  check_same_device(y, slots, "unpermute");
  check_same_device(y, w, "unpermute");
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == y.size(0) && y.size(0) == w.numel(),
              "unpermute: need y [T*K, D], slots [T*K], weights [T, K]; got y ", y.sizes(),
              ", slots ", slots.sizes(), ", weights ", w.sizes());
}

inline void check_unpermute_backward(const at::Tensor& grad, const at::Tensor& y,
                                     const at::Tensor& slots, const at::Tensor& w) {
  check_unpermute(y, slots, w);
  check_2d(grad, "unpermute_backward: grad");
  check_same_device(grad, y, "unpermute_backward");
  TORCH_CHECK(grad.size(0) == w.size(0) && grad.size(1) == y.size(1) &&
              grad.scalar_type() == y.scalar_type(), "unpermute_backward: grad must be [T, D] ",
              "of y's dtype, got ", grad.sizes(), " ", grad.scalar_type());
}

inline void check_grouped(const at::Tensor& x, const at::Tensor& offsets, int64_t num_experts,
                          const char* op) {
  const std::string x_name = std::string(op) + ": x";
  const std::string offsets_name = std::string(op) + ": offsets";
  check_2d(x, x_name.c_str());
  check_float(x, x_name.c_str());
  check_index(offsets, offsets_name.c_str());
  check_same_device(x, offsets, op);
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == num_experts + 1, op,
              ": offsets must have num_experts + 1 = ", num_experts + 1, " entries, got ",
              offsets.sizes());
  auto host = offsets.cpu();
  auto o = host.data_ptr<int64_t>();
  TORCH_CHECK(o[0] == 0 && o[num_experts] == x.size(0), op, ": offsets must run from 0 to the ",
              x.size(0), " rows, got ", o[0], " .. ", o[num_experts]);
  for (int64_t e = 0; e < num_experts; ++e) {
    TORCH_CHECK(o[e] <= o[e + 1], op, ": offsets must not decrease (expert ", e, ": ", o[e],
                " > ", o[e + 1], ")");
  }
}

inline void check_grouped_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets) {
  TORCH_CHECK(w.dim() == 3 && w.is_contiguous(), "grouped_mm: w must be a contiguous [E, D, H] "
              "tensor, got shape ", w.sizes());
  check_same_device(x, w, "grouped_mm");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "grouped_mm: x is ", x.scalar_type(),
              " but w is ", w.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.size(1), "grouped_mm: x [N, D] and w [E, D, H] "
              "disagree on D: ", x.sizes(), " vs ", w.sizes());
  check_grouped(x, offsets, w.size(0), "grouped_mm");
}

inline void check_wgrad(const at::Tensor& x, const at::Tensor& g, const at::Tensor& offsets) {
  check_2d(g, "grouped_mm_wgrad: grad");
  check_same_device(x, g, "grouped_mm_wgrad");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && g.size(0) == x.size(0),
              "grouped_mm_wgrad: x ", x.sizes(), " ", x.scalar_type(), " and grad ", g.sizes(),
              " ", g.scalar_type(), " must share rows and dtype");
  check_grouped(x, offsets, offsets.size(0) - 1, "grouped_mm_wgrad");
}

}  // namespace minimoe
