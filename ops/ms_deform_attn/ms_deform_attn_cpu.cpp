// CPU kernels of multi-scale deformable attention.
//
// bfloat16 / float32 / float64 inputs run in the kernels, with arithmetic in at::opmath_type
// (float, or double for float64) as in the CUDA kernels; the backward accumulates grad_value in an
// opmath-typed buffer (each value element collects the gradients of many sampling points) and
// casts it back. float16 inputs are widened to float32 once and the results narrowed: the same
// arithmetic, but ATen's vectorized conversions instead of c10::Half's per-element software
// conversion (this file is built without -mf16c), which made the float16 kernels about 5x slower
// than float32.
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
    const MSDeformAttnPointers<scalar_t>& in,
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
          const int height = static_cast<int>(in.shapes[2 * l]);
          const int width = static_cast<int>(in.shapes[2 * l + 1]);
          const scalar_t* level_value = in.value + ((b * sz.num_values + in.starts[l]) * M + m) * C;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t point = point_base + l * P + p;
            BilinearPoint<acc_t> pt;
            if (!sampling_point<acc_t>(in.locations, point, height, width, pt)) {
              continue;
            }
            const acc_t a = in.weights[point];
            const CornerWeights<acc_t> w = corner_weights(pt);
            const acc_t corner_weight[4] = {a * w.w00, a * w.w01, a * w.w10, a * w.w11};
            for (int k = 0; k < 4; ++k) {
              if (!pt.corner_inside(k)) {
                continue;
              }
              const scalar_t* v =
                  level_value + pixel_offset(pt.y0 + k / 2, pt.x0 + k % 2, width) * token_stride;
              const acc_t cw = corner_weight[k];
              for (int64_t c = 0; c < C; ++c) {
                acc[c] += cw * static_cast<acc_t>(v[c]);
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
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void backward_kernel(
    const MSDeformAttnPointers<scalar_t>& in,
    const scalar_t* grad_output,   // [B, Q, M, C]
    acc_t* grad_value,             // [B, S, M, C], zero-initialised
    scalar_t* grad_locations,      // [B, Q, M, L, P, 2]
    scalar_t* grad_weights,        // [B, Q, M, L, P]
    const MSDeformAttnSizes& sz) {
  const int64_t M = sz.num_heads, C = sz.channels, L = sz.num_levels, P = sz.num_points;
  const int64_t Q = sz.num_queries;
  const int64_t token_stride = M * C;
  at::parallel_for(0, sz.batch * M, 1, [&](int64_t begin, int64_t end) {
    // Corners outside the level read from `zeros` and write into `sink`, keeping the channel
    // loop branch-free.
    const std::vector<scalar_t> zeros(C, scalar_t(0));
    std::vector<acc_t> sink(C);
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M;
      const int64_t m = bm % M;
      for (int64_t q = 0; q < Q; ++q) {
        const scalar_t* grad = grad_output + ((b * Q + q) * M + m) * C;
        const int64_t point_base = ((b * Q + q) * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int height = static_cast<int>(in.shapes[2 * l]);
          const int width = static_cast<int>(in.shapes[2 * l + 1]);
          const int64_t level_offset = ((b * sz.num_values + in.starts[l]) * M + m) * C;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t point = point_base + l * P + p;
            BilinearPoint<acc_t> pt;
            if (!sampling_point<acc_t>(in.locations, point, height, width, pt)) {
              grad_weights[point] = scalar_t(0);
              grad_locations[2 * point] = scalar_t(0);
              grad_locations[2 * point + 1] = scalar_t(0);
              continue;
            }
            const scalar_t* v[4];
            acc_t* gv[4];
            for (int k = 0; k < 4; ++k) {
              const bool inside = pt.corner_inside(k);
              const int64_t offset =
                  level_offset + pixel_offset(pt.y0 + k / 2, pt.x0 + k % 2, width) * token_stride;
              v[k] = inside ? in.value + offset : zeros.data();
              gv[k] = inside ? grad_value + offset : sink.data();
            }
            const acc_t a = in.weights[point];
            const CornerWeights<acc_t> w = corner_weights(pt);
            acc_t grad_a = 0, grad_x = 0, grad_y = 0;
            // The three sums may be reordered across channels, which lets the compiler vectorize
            // the loop (the grad_value rows of the four corners are distinct or the sink).
#pragma omp simd reduction(+ : grad_a, grad_x, grad_y)
            for (int64_t c = 0; c < C; ++c) {
              const acc_t g = static_cast<acc_t>(grad[c]);
              accumulate_point_grads<acc_t>(
                  pt,
                  w,
                  g,
                  static_cast<acc_t>(v[0][c]),
                  static_cast<acc_t>(v[1][c]),
                  static_cast<acc_t>(v[2][c]),
                  static_cast<acc_t>(v[3][c]),
                  grad_a,
                  grad_x,
                  grad_y);
              const acc_t ag = a * g;
              gv[0][c] += ag * w.w00;
              gv[1][c] += ag * w.w01;
              gv[2][c] += ag * w.w10;
              gv[3][c] += ag * w.w11;
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
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const MSDeformAttnInputs in = check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.scalar_type() == at::kHalf) {
    return ms_deform_attn_forward_cpu(
               in.value.to(at::kFloat),
               spatial_shapes,
               level_start_index,
               in.sampling_locations.to(at::kFloat),
               in.attention_weights.to(at::kFloat))
        .to(at::kHalf);
  }
  const MSDeformAttnSizes& sz = in.sizes;
  check_ms_deform_attn_levels(spatial_shapes, level_start_index, sz.num_values);
  at::Tensor output =
      at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND(
      at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        forward_kernel<scalar_t>(in.pointers<scalar_t>(), output.data_ptr<scalar_t>(), sz);
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const MSDeformAttnInputs in = check_ms_deform_attn_backward_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output);
  const MSDeformAttnSizes& sz = in.sizes;
  if (value.scalar_type() == at::kHalf) {
    const auto grads = ms_deform_attn_backward_cpu(
        in.value.to(at::kFloat),
        spatial_shapes,
        level_start_index,
        in.sampling_locations.to(at::kFloat),
        in.attention_weights.to(at::kFloat),
        grad_output.to(at::kFloat));
    return std::make_tuple(
        std::get<0>(grads).to(at::kHalf),
        std::get<1>(grads).to(at::kHalf),
        std::get<2>(grads).to(at::kHalf));
  }
  check_ms_deform_attn_levels(spatial_shapes, level_start_index, sz.num_values);
  const at::Tensor grad_output_c = grad_output.contiguous();
  // opmath-typed accumulator (float for bfloat16; for float32 / float64 it is the result)
  const at::ScalarType acc_dtype = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value_acc = at::zeros(in.value.sizes(), in.value.options().dtype(acc_dtype));
  at::Tensor grad_locations = at::empty_like(in.sampling_locations);
  at::Tensor grad_weights = at::empty_like(in.attention_weights);
  AT_DISPATCH_FLOATING_TYPES_AND(
      at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
        backward_kernel<scalar_t>(
            in.pointers<scalar_t>(),
            grad_output_c.data_ptr<scalar_t>(),
            grad_value_acc.data_ptr<at::opmath_type<scalar_t>>(),
            grad_locations.data_ptr<scalar_t>(),
            grad_weights.data_ptr<scalar_t>(),
            sz);
      });
  return std::make_tuple(grad_value_acc.to(value.scalar_type()), grad_locations, grad_weights);
}

} // namespace dinov3_m2f
