// CUDA kernels of multi-scale deformable attention.
//
// float16 / bfloat16 / float32 / float64 inputs; arithmetic in at::opmath_type (float, or double
// for float64). A group of G threads (a power of two, at most a warp) handles one
// (batch, query, head): lanes split the channels, the bilinear geometry of each point is
// computed once per lane, the per-point gradient sums are reduced with warp shuffles, and
// grad_value is accumulated with atomicAdd into an opmath-typed buffer.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "ms_deform_attn/ms_deform_attn.h"

namespace dinov3_m2f {

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr unsigned int kFullWarpMask = 0xffffffffu;

// Smallest power of two >= channels, capped at a warp (lanes then loop over the channels).
int group_size_for(int64_t channels) {
  int size = 1;
  while (size < channels && size < kWarpSize) {
    size *= 2;
  }
  return size;
}

int64_t num_blocks_for(int64_t num_groups, int group_size) {
  const int64_t blocks = (num_groups * group_size + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(
      blocks <= std::numeric_limits<int>::max(),
      "ms_deform_attn: too many (batch, query, head) triples for one launch: ", num_groups);
  return blocks;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load_or_zero(const scalar_t* ptr, bool inside) {
  return inside ? static_cast<acc_t>(*ptr) : acc_t(0);
}

// Problem sizes passed to the kernels by value.
struct KernelSizes {
  int64_t num_groups; // B * Q * M
  int64_t num_queries;
  int64_t num_values;
  int num_heads;
  int channels;
  int num_levels;
  int num_points;
  int group_size;
};

KernelSizes kernel_sizes(const MSDeformAttnSizes& sz) {
  return KernelSizes{
      sz.batch * sz.num_queries * sz.num_heads,
      sz.num_queries,
      sz.num_values,
      static_cast<int>(sz.num_heads),
      static_cast<int>(sz.channels),
      static_cast<int>(sz.num_levels),
      static_cast<int>(sz.num_points),
      group_size_for(sz.channels)};
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(
    const scalar_t* __restrict__ value,     // [B, S, M, C]
    const int64_t* __restrict__ shapes,     // [L, 2]
    const int64_t* __restrict__ starts,     // [L]
    const scalar_t* __restrict__ locations, // [B, Q, M, L, P, 2]
    const scalar_t* __restrict__ weights,   // [B, Q, M, L, P]
    scalar_t* __restrict__ output,          // [B, Q, M, C]
    const KernelSizes sz) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread / sz.group_size; // (b * Q + q) * M + m
  const int lane = threadIdx.x & (sz.group_size - 1);
  if (group >= sz.num_groups) {
    return;
  }
  const int64_t m = group % sz.num_heads;
  const int64_t b = group / (sz.num_queries * sz.num_heads);
  const int64_t token_stride = static_cast<int64_t>(sz.num_heads) * sz.channels;
  const int64_t point_base = group * sz.num_levels * sz.num_points;
  for (int c = lane; c < sz.channels; c += sz.group_size) {
    acc_t acc = 0;
    for (int l = 0; l < sz.num_levels; ++l) {
      const int height = static_cast<int>(shapes[2 * l]);
      const int width = static_cast<int>(shapes[2 * l + 1]);
      const scalar_t* level_value =
          value + ((b * sz.num_values + starts[l]) * sz.num_heads + m) * sz.channels + c;
      for (int p = 0; p < sz.num_points; ++p) {
        const int64_t point = point_base + l * sz.num_points + p;
        BilinearPoint<acc_t> pt;
        if (!sampling_point<acc_t>(locations, point, height, width, pt)) {
          continue;
        }
        const scalar_t* v00 =
            level_value + (static_cast<int64_t>(pt.y0) * width + pt.x0) * token_stride;
        const scalar_t* v10 = v00 + static_cast<int64_t>(width) * token_stride;
        const acc_t top = (1 - pt.fx) * load_or_zero<scalar_t, acc_t>(v00, pt.top && pt.left) +
            pt.fx * load_or_zero<scalar_t, acc_t>(v00 + token_stride, pt.top && pt.right);
        const acc_t bottom = (1 - pt.fx) * load_or_zero<scalar_t, acc_t>(v10, pt.bottom && pt.left) +
            pt.fx * load_or_zero<scalar_t, acc_t>(v10 + token_stride, pt.bottom && pt.right);
        acc += static_cast<acc_t>(weights[point]) * ((1 - pt.fy) * top + pt.fy * bottom);
      }
    }
    output[group * sz.channels + c] = static_cast<scalar_t>(acc);
  }
}

// Every lane of a warp runs the same number of point iterations (inactive groups included), so
// the full-mask shuffles below are always reached by the whole warp.
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(
    const scalar_t* __restrict__ value,       // [B, S, M, C]
    const int64_t* __restrict__ shapes,       // [L, 2]
    const int64_t* __restrict__ starts,       // [L]
    const scalar_t* __restrict__ locations,   // [B, Q, M, L, P, 2]
    const scalar_t* __restrict__ weights,     // [B, Q, M, L, P]
    const scalar_t* __restrict__ grad_output, // [B, Q, M, C]
    acc_t* __restrict__ grad_value,           // [B, S, M, C], zero-initialised
    scalar_t* __restrict__ grad_locations,    // [B, Q, M, L, P, 2]
    scalar_t* __restrict__ grad_weights,      // [B, Q, M, L, P]
    const KernelSizes sz) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread / sz.group_size;
  const int lane = threadIdx.x & (sz.group_size - 1);
  const bool active = group < sz.num_groups;
  const int64_t m = group % sz.num_heads;
  const int64_t b = group / (sz.num_queries * sz.num_heads);
  const int64_t token_stride = static_cast<int64_t>(sz.num_heads) * sz.channels;
  const int64_t point_base = group * sz.num_levels * sz.num_points;
  const scalar_t* grad = grad_output + group * sz.channels;
  for (int l = 0; l < sz.num_levels; ++l) {
    const int height = static_cast<int>(shapes[2 * l]);
    const int width = static_cast<int>(shapes[2 * l + 1]);
    const int64_t level_offset = ((b * sz.num_values + starts[l]) * sz.num_heads + m) * sz.channels;
    for (int p = 0; p < sz.num_points; ++p) {
      const int64_t point = point_base + l * sz.num_points + p;
      acc_t grad_a = 0;
      acc_t grad_x = 0;
      acc_t grad_y = 0;
      acc_t a = 0;
      BilinearPoint<acc_t> pt;
      const bool inside = active && sampling_point<acc_t>(locations, point, height, width, pt);
      if (inside) {
        a = static_cast<acc_t>(weights[point]);
        const CornerWeights<acc_t> w = corner_weights(pt);
        const bool in00 = pt.top && pt.left, in01 = pt.top && pt.right;
        const bool in10 = pt.bottom && pt.left, in11 = pt.bottom && pt.right;
        const int64_t off00 =
            level_offset + (static_cast<int64_t>(pt.y0) * width + pt.x0) * token_stride;
        const int64_t off01 = off00 + token_stride;
        const int64_t off10 = off00 + static_cast<int64_t>(width) * token_stride;
        const int64_t off11 = off10 + token_stride;
        for (int c = lane; c < sz.channels; c += sz.group_size) {
          const acc_t g = static_cast<acc_t>(grad[c]);
          const acc_t v00 = load_or_zero<scalar_t, acc_t>(value + off00 + c, in00);
          const acc_t v01 = load_or_zero<scalar_t, acc_t>(value + off01 + c, in01);
          const acc_t v10 = load_or_zero<scalar_t, acc_t>(value + off10 + c, in10);
          const acc_t v11 = load_or_zero<scalar_t, acc_t>(value + off11 + c, in11);
          accumulate_point_grads<acc_t>(pt, w, g, v00, v01, v10, v11, grad_a, grad_x, grad_y);
          const acc_t ag = a * g;
          if (in00) {
            atomicAdd(grad_value + off00 + c, ag * w.w00);
          }
          if (in01) {
            atomicAdd(grad_value + off01 + c, ag * w.w01);
          }
          if (in10) {
            atomicAdd(grad_value + off10 + c, ag * w.w10);
          }
          if (in11) {
            atomicAdd(grad_value + off11 + c, ag * w.w11);
          }
        }
      }
      for (int offset = sz.group_size / 2; offset > 0; offset /= 2) {
        grad_a += __shfl_xor_sync(kFullWarpMask, grad_a, offset, sz.group_size);
        grad_x += __shfl_xor_sync(kFullWarpMask, grad_x, offset, sz.group_size);
        grad_y += __shfl_xor_sync(kFullWarpMask, grad_y, offset, sz.group_size);
      }
      if (active && lane == 0) {
        grad_weights[point] = static_cast<scalar_t>(grad_a);
        // d(pixel x)/d(location x) = width, likewise for y
        grad_locations[2 * point] = static_cast<scalar_t>(a * grad_x * width);
        grad_locations[2 * point + 1] = static_cast<scalar_t>(a * grad_y * height);
      }
    }
  }
}

// The level check reads the index tensors on the host; that sync is not allowed while a CUDA
// graph is being captured, so it is skipped then (the kernels never read outside a level).
void check_levels_unless_capturing(
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    int64_t num_values) {
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    check_ms_deform_attn_levels(spatial_shapes, level_start_index, num_values);
  }
}

} // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const MSDeformAttnInputs in = check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const MSDeformAttnSizes& sz = in.sizes;
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn: value must be a CUDA tensor, got ", value.device());
  const c10::cuda::CUDAGuard device_guard(value.device());
  check_levels_unless_capturing(spatial_shapes, level_start_index, sz.num_values);
  at::Tensor output =
      at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const KernelSizes ksz = kernel_sizes(sz);
  const int64_t blocks = num_blocks_for(ksz.num_groups, ksz.group_size);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto p = in.pointers<scalar_t>();
        forward_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
            p.value, p.shapes, p.starts, p.locations, p.weights, output.data_ptr<scalar_t>(), ksz);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const MSDeformAttnInputs in = check_ms_deform_attn_backward_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output);
  const MSDeformAttnSizes& sz = in.sizes;
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn: value must be a CUDA tensor, got ", value.device());
  const c10::cuda::CUDAGuard device_guard(value.device());
  check_levels_unless_capturing(spatial_shapes, level_start_index, sz.num_values);
  const at::Tensor grad_output_c = grad_output.contiguous();
  // atomics accumulate in opmath precision (float for half types), cast back at the end
  const at::ScalarType acc_dtype = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value_acc = at::zeros(in.value.sizes(), in.value.options().dtype(acc_dtype));
  at::Tensor grad_locations = at::empty_like(in.sampling_locations);
  at::Tensor grad_weights = at::empty_like(in.attention_weights);
  const KernelSizes ksz = kernel_sizes(sz);
  if (ksz.num_groups > 0) {
    const int64_t blocks = num_blocks_for(ksz.num_groups, ksz.group_size);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto p = in.pointers<scalar_t>();
          backward_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
              p.value,
              p.shapes,
              p.starts,
              p.locations,
              p.weights,
              grad_output_c.data_ptr<scalar_t>(),
              grad_value_acc.data_ptr<acc_t>(),
              grad_locations.data_ptr<scalar_t>(),
              grad_weights.data_ptr<scalar_t>(),
              ksz);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return std::make_tuple(grad_value_acc.to(value.scalar_type()), grad_locations, grad_weights);
}

} // namespace dinov3_m2f
