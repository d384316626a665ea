// The op schemas of the minimoe extension (docs/extension.md). Kernels live beside this file:
// cpu/moe_cpu.cpp and cuda/moe_cuda.cu register implementations with TORCH_LIBRARY_IMPL;
// minimoe/ops.py adds autograd and fake (meta) implementations from Python.
//
// Shape legend: T tokens, K choices per token, N = T*K routed rows, E experts, D input width,
// H output width. Slot t*K + k is token t's k-th choice.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty Python module, so that `import minimoe._C` loads this library (and with it the
// registrations below); the ops themselves are reached through torch.ops.minimoe.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(minimoe, m) {
  // x [T, D], expert_ids [T, K] (int64) -> rows [N, D] grouped by ascending expert and, within
  // an expert, ascending slot; slots [N] (int64, the slot of each row); offsets [E+1] (int64).
  m.def("permute(Tensor x, Tensor expert_ids, int num_experts) -> (Tensor, Tensor, Tensor)");
  // y [N, D], slots [N], weights [T, K] -> [T, D]: y_TD[t] = sum_k weights[t, k] * y[row of
  // slot t*K + k], accumulated in float32.
  m.def("unpermute(Tensor y, Tensor slots, Tensor weights) -> Tensor");
  // The backward of unpermute: (grad [T, D], y, slots, weights) -> (grad_y [N, D],
  // grad_weights [T, K]).
  m.def("unpermute_backward(Tensor grad, Tensor y, Tensor slots, Tensor weights) -> (Tensor, Tensor)");
  // x [N, D], w [E, D, H], offsets [E+1] -> [N, H]: rows offsets[e]:offsets[e+1] times w[e].
  m.def("grouped_mm(Tensor x, Tensor w, Tensor offsets) -> Tensor");
  // The weight gradient of grouped_mm: (x [N, D], grad [N, H], offsets) -> [E, D, H] with
  // grad_w[e] = x_e^T grad_e over expert e's rows (zero for an empty expert).
  m.def("grouped_mm_wgrad(Tensor x, Tensor grad, Tensor offsets) -> Tensor");
}
