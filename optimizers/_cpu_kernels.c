/* LAMB, Lion and schedule-free AdamW/SGD steps for contiguous fp32 tensors on CPU (the "fused"
 * and default "fast" paths).
 *
 * Built and loaded by optimizers/_cpu_kernels.py (cc -O3 -march=native -fopenmp
 * -ffp-contract=off, so every product and sum is rounded as in torch's eager kernels).
 *
 * One OpenMP parallel region per step. A tensor of at least `split_numel` elements is shared
 * between the threads; smaller ones are handed out whole, one thread each.
 *
 * LAMB needs both norms of a tensor before it may update it, so a shared tensor takes two passes:
 *   pass 1: m, v updated in place; u = Adam direction + wd * p stored in a scratch buffer; the
 *           thread's share of ||p||^2 and ||u||^2 (float per 4096-element block, double across),
 *           summed after a barrier in thread order (deterministic);
 *   pass 2: p -= lr * ratio * u.
 * Both passes use the same static schedule, so each thread reads back in pass 2 the part of p and
 * u that it touched in pass 1, still in its own cache: DRAM sees p, g, m, v read once and p, m, v
 * written once, as in AdamW. The scratch buffer (and the partial sums) alternate between two
 * halves from one shared tensor to the next; the barrier between the passes of tensor k then
 * guarantees that no thread still reads the half that tensor k+1 writes.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

#define BLOCK 4096

/* Per-tensor LAMB hyperparameters, as optimizers/_cpu_kernels.py lays them out. */
typedef struct {
  float lr, b1, b2, eps, wd;
  float inv_bc1, inv_sqrt_bc2; /* 1/(1-b1^t), 1/sqrt(1-b2^t); 1 without bias correction */
  float clip;                  /* the gradient divisor, max(1, ||g|| / max_grad_norm), or 1 */
} LambHyper;
enum { TRUST_RATIO = 1, TRUST_CLIP = 2 };

static inline float trust_ratio(double p_sq, double u_sq, int32_t flags) {
  float ratio = (p_sq > 0 && u_sq > 0) ? (float)sqrt(p_sq / u_sq) : 1.0f;
  if ((flags & TRUST_CLIP) && ratio > 1.0f) ratio = 1.0f;
  return ratio;
}

/* The bias-corrected Adam direction of the moments m, v. */
static inline float adam_direction(const LambHyper *h, float m, float v) {
  return (m * h->inv_bc1) / (sqrtf(v) * h->inv_sqrt_bc2 + h->eps);
}

/* Moves *m and *v with the gradient g; returns u = the Adam direction + wd * x. */
static inline float lamb_moments(const LambHyper *h, float g, float x, float *m, float *v) {
  const float gc = g / h->clip;
  *m = *m + (1.0f - h->b1) * (gc - *m);
  *v = h->b2 * *v + (1.0f - h->b2) * (gc * gc);
  return adam_direction(h, *m, *v) + h->wd * x;
}

void optpilot_lamb_step(int64_t n, float *const *params, const float *const *grads,
                        float *const *exp_avgs, float *const *exp_avg_sqs,
                        const int64_t *numels, const LambHyper *hyper, const int32_t *flags,
                        int64_t split_numel, float *scratch, int64_t scratch_half,
                        double *partials, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    int64_t shared_trust = 0; /* shared tensors with a trust ratio so far (scratch half) */
    for (int64_t t = 0; t < n; ++t) {
      const int64_t N = numels[t];
      if (N < split_numel) continue;
      const LambHyper h = hyper[t]; /* a local copy: no aliasing with the tensors */
      float *restrict p = params[t];
      const float *restrict g = grads[t];
      float *restrict m = exp_avgs[t];
      float *restrict v = exp_avg_sqs[t];
      if (!(flags[t] & TRUST_RATIO)) { /* plain Adam step: one pass */
#pragma omp for simd schedule(static) nowait
        for (int64_t i = 0; i < N; ++i) p[i] -= h.lr * lamb_moments(&h, g[i], p[i], &m[i], &v[i]);
        continue;
      }
      const int64_t half = shared_trust++ & 1;
      float *restrict u = scratch + half * scratch_half;
      double *partial = partials + half * 2 * threads; /* halves, like the scratch */
      double p_sq = 0, u_sq = 0;
#pragma omp for schedule(static) nowait
      for (int64_t start = 0; start < N; start += BLOCK) {
        const int64_t end = start + BLOCK < N ? start + BLOCK : N;
        float block_p = 0, block_u = 0;
#pragma omp simd reduction(+ : block_p, block_u)
        for (int64_t i = start; i < end; ++i) {
          const float x = p[i];
          u[i] = lamb_moments(&h, g[i], x, &m[i], &v[i]);
          block_p += x * x;
          block_u += u[i] * u[i];
        }
        p_sq += block_p;
        u_sq += block_u;
      }
      partial[2 * omp_get_thread_num()] = p_sq;
      partial[2 * omp_get_thread_num() + 1] = u_sq;
#pragma omp barrier
      p_sq = u_sq = 0; /* summed in thread order: the same result on every run */
      for (int32_t j = 0; j < omp_get_num_threads(); ++j) {
        p_sq += partial[2 * j];
        u_sq += partial[2 * j + 1];
      }
      const float k = h.lr * trust_ratio(p_sq, u_sq, flags[t]);
#pragma omp for schedule(static) nowait
      for (int64_t start = 0; start < N; start += BLOCK) {
        const int64_t end = start + BLOCK < N ? start + BLOCK : N;
#pragma omp simd
        for (int64_t i = start; i < end; ++i) p[i] = p[i] - k * u[i];
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t N = numels[t];
      if (N >= split_numel) continue;
      const LambHyper h = hyper[t];
      float *restrict p = params[t];
      const float *restrict g = grads[t];
      float *restrict m = exp_avgs[t];
      float *restrict v = exp_avg_sqs[t];
      double p_sq = 0, u_sq = 0;
#pragma omp simd reduction(+ : p_sq, u_sq)
      for (int64_t i = 0; i < N; ++i) {
        const float x = p[i], ui = lamb_moments(&h, g[i], x, &m[i], &v[i]);
        p_sq += x * x;
        u_sq += ui * ui;
      }
      const float k = (flags[t] & TRUST_RATIO) ? h.lr * trust_ratio(p_sq, u_sq, flags[t]) : h.lr;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) {
        const float x = p[i];
        p[i] = x - k * (adam_direction(&h, m[i], v[i]) + h.wd * x);
      }
    }
  }
}

/* Per-tensor Lion hyperparameters, 4 floats per tensor. */
enum { LION_LR, LION_B1, LION_B2, LION_WD, LION_HP };

static inline void lion_tensor(int64_t start, int64_t end, float *restrict p,
                               const float *restrict g, float *restrict m, const float *h) {
  const float lr = h[LION_LR], b1 = h[LION_B1], b2 = h[LION_B2];
  const float decay = 1.0f - lr * h[LION_WD], c1 = 1.0f - b1, c2 = 1.0f - b2;
#pragma omp simd
  for (int64_t i = start; i < end; ++i) {
    const float mi = m[i], gi = g[i];
    const float c = b1 * mi + c1 * gi;
    const float sign = (float)(c > 0.0f) - (float)(c < 0.0f); /* torch.sign: NaN -> 0 */
    p[i] = p[i] * decay - lr * sign;
    m[i] = b2 * mi + c2 * gi;
  }
}

void optpilot_lion_step(int64_t n, float *const *params, const float *const *grads,
                        float *const *exp_avgs, const int64_t *numels, const float *hyper,
                        int64_t split_numel, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    for (int64_t t = 0; t < n; ++t) {
      const int64_t N = numels[t];
      if (N < split_numel) continue;
      /* no barrier: the tensors are independent */
#pragma omp for schedule(static) nowait
      for (int64_t start = 0; start < N; start += BLOCK) {
        const int64_t end = start + BLOCK < N ? start + BLOCK : N;
        lion_tensor(start, end, params[t], grads[t], exp_avgs[t], hyper + LION_HP * t);
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) {
      if (numels[t] < split_numel)
        lion_tensor(0, numels[t], params[t], grads[t], exp_avgs[t], hyper + LION_HP * t);
    }
  }
}

/* Schedule-free AdamW and SGD (optimizers/_schedulefree.py), in y/z form: the parameter holds y,
 * u = the base step's direction at y (weight decay included),
 *   y' = y + c * (z - y) + y_lr * u,   z' = z - lr * u.
 * Per-tensor hyperparameters: lr, wd, c, y_lr for both; AdamW appends b2, eps, 1/sqrt(1-b2^t)
 * and u = g / (sqrt(v') * inv_sqrt_bc2 + eps) + wd * y with v' = b2 * v + (1 - b2) * g^2; SGD
 * (no v) has u = g + wd * y. One pass per tensor: y, g, z (and v) read once, written once. */
enum { SF_LR, SF_WD, SF_C, SF_YLR, SF_SGD_HP, SF_B2 = SF_SGD_HP, SF_EPS, SF_INV_SQRT_BC2,
       SF_ADAMW_HP };

static inline void schedulefree_range(int64_t start, int64_t end, float *restrict y,
                                      const float *restrict g, float *restrict z,
                                      float *restrict v, const float *h) {
  const float lr = h[SF_LR], wd = h[SF_WD], c = h[SF_C], y_lr = h[SF_YLR];
  if (v) {
    const float b2 = h[SF_B2], c2 = 1.0f - b2, eps = h[SF_EPS], k2 = h[SF_INV_SQRT_BC2];
#pragma omp simd
    for (int64_t i = start; i < end; ++i) {
      const float gi = g[i], yi = y[i], zi = z[i];
      const float vi = b2 * v[i] + c2 * (gi * gi);
      const float u = gi / (sqrtf(vi) * k2 + eps) + wd * yi;
      v[i] = vi;
      y[i] = yi + c * (zi - yi) + y_lr * u;
      z[i] = zi - lr * u;
    }
  } else {
#pragma omp simd
    for (int64_t i = start; i < end; ++i) {
      const float yi = y[i], zi = z[i];
      const float u = g[i] + wd * yi;
      y[i] = yi + c * (zi - yi) + y_lr * u;
      z[i] = zi - lr * u;
    }
  }
}

/* exp_avg_sqs is NULL for SGD; hyper holds SF_ADAMW_HP or SF_SGD_HP floats per tensor. */
void optpilot_schedulefree_step(int64_t n, float *const *params, const float *const *grads,
                                float *const *zs, float *const *exp_avg_sqs,
                                const int64_t *numels, const float *hyper, int64_t split_numel,
                                int32_t threads) {
  const int64_t per_tensor = exp_avg_sqs ? SF_ADAMW_HP : SF_SGD_HP;
#pragma omp parallel num_threads(threads)
  {
    for (int64_t t = 0; t < n; ++t) {
      const int64_t N = numels[t];
      if (N < split_numel) continue;
      float *v = exp_avg_sqs ? exp_avg_sqs[t] : 0;
      /* no barrier: the tensors are independent */
#pragma omp for schedule(static) nowait
      for (int64_t start = 0; start < N; start += BLOCK) {
        const int64_t end = start + BLOCK < N ? start + BLOCK : N;
        schedulefree_range(start, end, params[t], grads[t], zs[t], v, hyper + per_tensor * t);
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) {
      if (numels[t] < split_numel)
        schedulefree_range(0, numels[t], params[t], grads[t], zs[t],
                           exp_avg_sqs ? exp_avg_sqs[t] : 0, hyper + per_tensor * t);
    }
  }
}
