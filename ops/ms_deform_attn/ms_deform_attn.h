// Multi-scale deformable attention: declarations of the device kernels and the input checks
// they share. The operators are registered with the dispatcher in ops/register.cpp.
//
// Shapes: value [B, S, M, C]; spatial_shapes [L, 2] int64 (H, W); level_start_index [L] int64;
// sampling_locations [B, Q, M, L, P, 2] (x, y) in [0, 1]; attention_weights [B, Q, M, L, P];
// output [B, Q, M * C].
#pragma once
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include <tuple>

namespace dinov3_m2f {

struct MSDeformAttnSizes {
  int64_t batch;
  int64_t num_values;  // S
  int64_t num_heads;   // M
  int64_t channels;    // C
  int64_t num_levels;  // L
  int64_t num_queries; // Q
  int64_t num_points;  // P
};

// Raw pointers to the five inputs, handed to the kernels.
template <typename scalar_t>
struct MSDeformAttnPointers {
  const scalar_t* value;     // [B, S, M, C]
  const int64_t* shapes;     // [L, 2]
  const int64_t* starts;     // [L]
  const scalar_t* locations; // [B, Q, M, L, P, 2]
  const scalar_t* weights;   // [B, Q, M, L, P]
};

// The five inputs of one call, checked and made contiguous, with their sizes.
struct MSDeformAttnInputs {
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor sampling_locations;
  at::Tensor attention_weights;
  MSDeformAttnSizes sizes;

  template <typename scalar_t>
  MSDeformAttnPointers<scalar_t> pointers() const {
    return MSDeformAttnPointers<scalar_t>{
        value.data_ptr<scalar_t>(),
        spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(),
        sampling_locations.data_ptr<scalar_t>(),
        attention_weights.data_ptr<scalar_t>()};
  }
};

// Checks ranks, dtypes, devices and consistent sizes (each message names the argument) and returns
// contiguous copies of the inputs with their sizes. The level check is separate
// (check_ms_deform_attn_levels): it syncs with the device.
inline MSDeformAttnInputs check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [B, S, heads, C], got ", value.sizes());
  TORCH_CHECK(
      at::isFloatingType(value.scalar_type()),
      "ms_deform_attn: value must be a floating point tensor, got ", value.scalar_type());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "ms_deform_attn: spatial_shapes must be [L, 2], got ", spatial_shapes.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong,
      "ms_deform_attn: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(
      level_start_index.dim() == 1,
      "ms_deform_attn: level_start_index must be [L], got ", level_start_index.sizes());
  TORCH_CHECK(
      level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: level_start_index must be int64, got ", level_start_index.scalar_type());
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
      "ms_deform_attn: sampling_locations must be [B, Q, heads, L, P, 2], got ",
      sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.dim() == 5,
      "ms_deform_attn: attention_weights must be [B, Q, heads, L, P], got ", attention_weights.sizes());
  TORCH_CHECK(
      sampling_locations.scalar_type() == value.scalar_type(),
      "ms_deform_attn: sampling_locations must have value's dtype ", value.scalar_type(), ", got ",
      sampling_locations.scalar_type());
  TORCH_CHECK(
      attention_weights.scalar_type() == value.scalar_type(),
      "ms_deform_attn: attention_weights must have value's dtype ", value.scalar_type(), ", got ",
      attention_weights.scalar_type());
  const auto device = value.device();
  TORCH_CHECK(
      spatial_shapes.device() == device,
      "ms_deform_attn: spatial_shapes is on ", spatial_shapes.device(), " but value is on ", device);
  TORCH_CHECK(
      level_start_index.device() == device,
      "ms_deform_attn: level_start_index is on ", level_start_index.device(), " but value is on ", device);
  TORCH_CHECK(
      sampling_locations.device() == device,
      "ms_deform_attn: sampling_locations is on ", sampling_locations.device(), " but value is on ", device);
  TORCH_CHECK(
      attention_weights.device() == device,
      "ms_deform_attn: attention_weights is on ", attention_weights.device(), " but value is on ", device);

  MSDeformAttnSizes sizes{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      spatial_shapes.size(0),
      sampling_locations.size(1),
      sampling_locations.size(4)};
  TORCH_CHECK(
      level_start_index.size(0) == sizes.num_levels,
      "ms_deform_attn: level_start_index must have L=", sizes.num_levels, " entries, got ",
      level_start_index.size(0));
  TORCH_CHECK(
      sampling_locations.size(0) == sizes.batch && sampling_locations.size(2) == sizes.num_heads &&
          sampling_locations.size(3) == sizes.num_levels,
      "ms_deform_attn: sampling_locations must be [B=", sizes.batch, ", Q, heads=", sizes.num_heads,
      ", L=", sizes.num_levels, ", P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
      "ms_deform_attn: attention_weights must be ", sampling_locations.sizes().slice(0, 5),
      " (sampling_locations without the last dim), got ", attention_weights.sizes());
  return MSDeformAttnInputs{
      value.contiguous(),
      spatial_shapes.contiguous(),
      level_start_index.contiguous(),
      sampling_locations.contiguous(),
      attention_weights.contiguous(),
      sizes};
}

// Checks sum(H * W) == S and level_start_index == exclusive cumsum of H * W. Reads the two small
// index tensors on the host (a device sync for CUDA tensors).
inline void check_ms_deform_attn_levels(
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    int64_t num_values) {
  const at::Tensor shapes = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU).contiguous();
  const int64_t* shape_ptr = shapes.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t h = shape_ptr[2 * l];
    const int64_t w = shape_ptr[2 * l + 1];
    TORCH_CHECK(
        h > 0 && w > 0, "ms_deform_attn: spatial_shapes[", l, "] must be positive, got (", h, ", ", w, ")");
    TORCH_CHECK(
        start_ptr[l] == total, "ms_deform_attn: level_start_index[", l, "] must be ", total,
        " (sum of H*W of the previous levels), got ", start_ptr[l]);
    total += h * w;
  }
  TORCH_CHECK(
      total == num_values, "ms_deform_attn: spatial_shapes give sum(H*W)=", total,
      " but value has S=", num_values);
}

inline void check_ms_deform_attn_grad_output(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const MSDeformAttnSizes& sizes) {
  TORCH_CHECK(
      grad_output.dim() == 3 && grad_output.size(0) == sizes.batch &&
          grad_output.size(1) == sizes.num_queries &&
          grad_output.size(2) == sizes.num_heads * sizes.channels,
      "ms_deform_attn: grad_output must be [B=", sizes.batch, ", Q=", sizes.num_queries,
      ", heads*C=", sizes.num_heads * sizes.channels, "], got ", grad_output.sizes());
  TORCH_CHECK(
      grad_output.scalar_type() == value.scalar_type(),
      "ms_deform_attn: grad_output must have value's dtype ", value.scalar_type(), ", got ",
      grad_output.scalar_type());
  TORCH_CHECK(
      grad_output.device() == value.device(),
      "ms_deform_attn: grad_output is on ", grad_output.device(), " but value is on ", value.device());
}

// The inputs of a backward call: the forward's, checked as the forward checks them, and
// grad_output, checked against them.
inline MSDeformAttnInputs check_ms_deform_attn_backward_inputs(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  MSDeformAttnInputs in = check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad_output(grad_output, value, in.sizes);
  return in;
}

// Bilinear sampling geometry of one point, computed once and reused for every channel.
// Pixel centres sit at (i + 0.5) / size (grid_sample with align_corners=False); corners outside
// the level read zeros (zero padding).
template <typename T>
struct BilinearPoint {
  int x0; // left column; the right one is x0 + 1
  int y0; // top row; the bottom one is y0 + 1
  T fx;   // fractional position inside the cell
  T fy;
  bool left, right, top, bottom; // which corner columns / rows are inside the level

  // Corner k = 2 * row + column (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right).
  C10_HOST_DEVICE bool corner_inside(int k) const {
    return (k / 2 == 0 ? top : bottom) && (k % 2 == 0 ? left : right);
  }
};

// Returns false when no corner of the point is inside the level (the point contributes zero).
template <typename T>
C10_HOST_DEVICE inline bool bilinear_point(T loc_x, T loc_y, int height, int width, BilinearPoint<T>& pt) {
  const T x = loc_x * static_cast<T>(width) - static_cast<T>(0.5);
  const T y = loc_y * static_cast<T>(height) - static_cast<T>(0.5);
  // also rejects NaN locations
  if (!(x > static_cast<T>(-1) && y > static_cast<T>(-1) && x < static_cast<T>(width) &&
        y < static_cast<T>(height))) {
    return false;
  }
  const T x_floor = ::floor(x);
  const T y_floor = ::floor(y);
  pt.x0 = static_cast<int>(x_floor);
  pt.y0 = static_cast<int>(y_floor);
  pt.fx = x - x_floor;
  pt.fy = y - y_floor;
  pt.left = pt.x0 >= 0;
  pt.right = pt.x0 + 1 < width;
  pt.top = pt.y0 >= 0;
  pt.bottom = pt.y0 + 1 < height;
  return true;
}

// Geometry of point `point` of a flat [..., 2] (x, y) locations array; see bilinear_point.
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline bool sampling_point(
    const scalar_t* locations, int64_t point, int height, int width, BilinearPoint<T>& pt) {
  return bilinear_point<T>(
      static_cast<T>(locations[2 * point]), static_cast<T>(locations[2 * point + 1]), height, width, pt);
}

// Bilinear weights of the four corners: top-left, top-right, bottom-left, bottom-right.
template <typename T>
struct CornerWeights {
  T w00, w01, w10, w11;
};

template <typename T>
C10_HOST_DEVICE inline CornerWeights<T> corner_weights(const BilinearPoint<T>& pt) {
  const T fx = pt.fx, fy = pt.fy;
  return CornerWeights<T>{(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
}

// Adds one channel (output gradient g, corner values v00..v11) to the gradients of the point's
// attention weight (grad_a) and of its pixel position (grad_x, grad_y).
template <typename T>
C10_HOST_DEVICE inline void accumulate_point_grads(
    const BilinearPoint<T>& pt,
    const CornerWeights<T>& w,
    T g,
    T v00,
    T v01,
    T v10,
    T v11,
    T& grad_a,
    T& grad_x,
    T& grad_y) {
  const T fx = pt.fx, fy = pt.fy;
  grad_a += g * (w.w00 * v00 + w.w01 * v01 + w.w10 * v10 + w.w11 * v11);
  grad_x += g * ((1 - fy) * (v01 - v00) + fy * (v11 - v10));
  grad_y += g * ((1 - fx) * (v10 - v00) + fx * (v11 - v01));
}

// Signatures of the device implementations (the schemas are in ops/register.cpp).
using MSDeformAttnForwardFn = at::Tensor(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);
using MSDeformAttnBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

MSDeformAttnForwardFn ms_deform_attn_forward_cpu;
MSDeformAttnBackwardFn ms_deform_attn_backward_cpu;
#if defined(WITH_CUDA)
MSDeformAttnForwardFn ms_deform_attn_forward_cuda;
MSDeformAttnBackwardFn ms_deform_attn_backward_cuda;
#endif

} // namespace dinov3_m2f
