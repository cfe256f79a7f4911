// CPU kernels of multi-scale deformable attention (float32 / float64).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ms_deform_attn/ms_deform_attn.h"

namespace dinov3_m2f {

namespace {

// Index of pixel (y, x) of a level, in units of value tokens.
inline int64_t pixel_offset(int y, int x, int width) {
  return static_cast<int64_t>(y) * width + x;
}

template <typename scalar_t>
void forward_kernel(
    const scalar_t* value,         // [B, S, M, C]
    const int64_t* shapes,         // [L, 2]
    const int64_t* starts,         // [L]
    const scalar_t* locations,     // [B, Q, M, L, P, 2]
    const scalar_t* weights,       // [B, Q, M, L, P]
    scalar_t* output,              // [B, Q, M, C]
    const MSDeformAttnSizes& sz) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = sz.num_heads, C = sz.channels, L = sz.num_levels, P = sz.num_points;
  const int64_t token_stride = M * C; // distance between neighbouring value tokens
  at::parallel_for(0, sz.batch * sz.num_queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / sz.num_queries;
      for (int64_t m = 0; m < M; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t point_base = (bq * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int height = static_cast<int>(shapes[2 * l]);
          const int width = static_cast<int>(shapes[2 * l + 1]);
          const scalar_t* level_value = value + ((b * sz.num_values + starts[l]) * M + m) * C;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t point = point_base + l * P + p;
            BilinearPoint<acc_t> pt;
            if (!bilinear_point<acc_t>(
                    locations[2 * point], locations[2 * point + 1], height, width, pt)) {
              continue;
            }
            const acc_t a = weights[point];
            const acc_t corner_weight[4] = {
                a * (1 - pt.fy) * (1 - pt.fx), a * (1 - pt.fy) * pt.fx,
                a * pt.fy * (1 - pt.fx), a * pt.fy * pt.fx};
            const bool corner_inside[4] = {
                pt.top && pt.left, pt.top && pt.right, pt.bottom && pt.left, pt.bottom && pt.right};
            for (int k = 0; k < 4; ++k) {
              if (!corner_inside[k]) {
                continue;
              }
              const scalar_t* v =
                  level_value + pixel_offset(pt.y0 + k / 2, pt.x0 + k % 2, width) * token_stride;
              const acc_t w = corner_weight[k];
              for (int64_t c = 0; c < C; ++c) {
                acc[c] += w * static_cast<acc_t>(v[c]);
              }
            }
          }
        }
        scalar_t* out = output + (bq * M + m) * C;
        for (int64_t c = 0; c < C; ++c) {
          out[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

// Work is split by (batch, head): the grad_value slices [b, :, m, :] are disjoint, so
// accumulation needs no atomics.
template <typename scalar_t>
void backward_kernel(
    const scalar_t* value,         // [B, S, M, C]
    const int64_t* shapes,         // [L, 2]
    const int64_t* starts,         // [L]
    const scalar_t* locations,     // [B, Q, M, L, P, 2]
    const scalar_t* weights,       // [B, Q, M, L, P]
    const scalar_t* grad_output,   // [B, Q, M, C]
    scalar_t* grad_value,          // [B, S, M, C], zero-initialised
    scalar_t* grad_locations,      // [B, Q, M, L, P, 2]
    scalar_t* grad_weights,        // [B, Q, M, L, P]
    const MSDeformAttnSizes& sz) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = sz.num_heads, C = sz.channels, L = sz.num_levels, P = sz.num_points;
  const int64_t Q = sz.num_queries;
  const int64_t token_stride = M * C;
  at::parallel_for(0, sz.batch * M, 1, [&](int64_t begin, int64_t end) {
    // Corners outside the level read from `zeros` and write into `sink`, keeping the channel
    // loop branch-free.
    const std::vector<scalar_t> zeros(C, scalar_t(0));
    std::vector<scalar_t> sink(C);
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M;
      const int64_t m = bm % M;
      for (int64_t q = 0; q < Q; ++q) {
        const scalar_t* grad = grad_output + ((b * Q + q) * M + m) * C;
        const int64_t point_base = ((b * Q + q) * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int height = static_cast<int>(shapes[2 * l]);
          const int width = static_cast<int>(shapes[2 * l + 1]);
          const int64_t level_offset = ((b * sz.num_values + starts[l]) * M + m) * C;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t point = point_base + l * P + p;
            BilinearPoint<acc_t> pt;
            if (!bilinear_point<acc_t>(
                    locations[2 * point], locations[2 * point + 1], height, width, pt)) {
              grad_weights[point] = scalar_t(0);
              grad_locations[2 * point] = scalar_t(0);
              grad_locations[2 * point + 1] = scalar_t(0);
              continue;
            }
            const bool corner_inside[4] = {
                pt.top && pt.left, pt.top && pt.right, pt.bottom && pt.left, pt.bottom && pt.right};
            const scalar_t* v[4];
            scalar_t* gv[4];
            for (int k = 0; k < 4; ++k) {
              const int64_t offset =
                  level_offset + pixel_offset(pt.y0 + k / 2, pt.x0 + k % 2, width) * token_stride;
              v[k] = corner_inside[k] ? value + offset : zeros.data();
              gv[k] = corner_inside[k] ? grad_value + offset : sink.data();
            }
            const acc_t a = weights[point];
            const acc_t fx = pt.fx, fy = pt.fy;
            const acc_t w00 = (1 - fy) * (1 - fx), w01 = (1 - fy) * fx;
            const acc_t w10 = fy * (1 - fx), w11 = fy * fx;
            acc_t grad_a = 0, grad_x = 0, grad_y = 0;
            for (int64_t c = 0; c < C; ++c) {
              const acc_t g = grad[c];
              const acc_t v00 = v[0][c], v01 = v[1][c], v10 = v[2][c], v11 = v[3][c];
              grad_a += g * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11);
              grad_x += g * ((1 - fy) * (v01 - v00) + fy * (v11 - v10));
              grad_y += g * ((1 - fx) * (v10 - v00) + fx * (v11 - v01));
              const acc_t ag = a * g;
              gv[0][c] += static_cast<scalar_t>(ag * w00);
              gv[1][c] += static_cast<scalar_t>(ag * w01);
              gv[2][c] += static_cast<scalar_t>(ag * w10);
              gv[3][c] += static_cast<scalar_t>(ag * w11);
            }
            grad_weights[point] = static_cast<scalar_t>(grad_a);
            // d(pixel x)/d(location x) = width, likewise for y
            grad_locations[2 * point] = static_cast<scalar_t>(a * grad_x * width);
            grad_locations[2 * point + 1] = static_cast<scalar_t>(a * grad_y * height);
          }
        }
      }
    }
  });
}

} // namespace

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnSizes sz = check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_levels(spatial_shapes, level_start_index, sz.num_values);
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.contiguous();
  const at::Tensor starts_c = level_start_index.contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  at::Tensor output =
      at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(
        value_c.data_ptr<scalar_t>(),
        shapes_c.data_ptr<int64_t>(),
        starts_c.data_ptr<int64_t>(),
        locations_c.data_ptr<scalar_t>(),
        weights_c.data_ptr<scalar_t>(),
        output.data_ptr<scalar_t>(),
        sz);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const MSDeformAttnSizes sz = check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad_output(grad_output, value, sz);
  check_ms_deform_attn_levels(spatial_shapes, level_start_index, sz.num_values);
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.contiguous();
  const at::Tensor starts_c = level_start_index.contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  const at::Tensor grad_output_c = grad_output.contiguous();
  at::Tensor grad_value = at::zeros_like(value_c);
  at::Tensor grad_locations = at::empty_like(locations_c);
  at::Tensor grad_weights = at::empty_like(weights_c);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        value_c.data_ptr<scalar_t>(),
        shapes_c.data_ptr<int64_t>(),
        starts_c.data_ptr<int64_t>(),
        locations_c.data_ptr<scalar_t>(),
        weights_c.data_ptr<scalar_t>(),
        grad_output_c.data_ptr<scalar_t>(),
        grad_value.data_ptr<scalar_t>(),
        grad_locations.data_ptr<scalar_t>(),
        grad_weights.data_ptr<scalar_t>(),
        sz);
  });
  return std::make_tuple(grad_value, grad_locations, grad_weights);
}

} // namespace dinov3_m2f
