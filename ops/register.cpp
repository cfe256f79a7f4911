// The one operator registration of the dinov3_m2f extension (torch.ops.dinov3_m2f.*).
#include <Python.h>
#include <torch/library.h>

#include "ms_deform_attn/ms_deform_attn.h"

namespace dinov3_m2f {

TORCH_LIBRARY(dinov3_m2f, m) {
  // FakeTensor (torch.compile) implementations are registered in Python, in this module.
  m.set_python_module("dinov3_m2f.layers.ms_deform_attn_func");
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dinov3_m2f, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

#if defined(WITH_CUDA)
TORCH_LIBRARY_IMPL(dinov3_m2f, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}
#endif

} // namespace dinov3_m2f

// `import dinov3_m2f._C` loads this library, which runs the registrations above; the Python
// module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
