// Fused kernels for training the GPT of model/gpt.ts: each replaces a chain of tfjs ops (and
// the chain of their gradients) by one pass, on both cores when the work is large enough. Same
// math as the tfjs reference path; float32 throughout, reductions in several vector lanes.
#pragma once

#include <cstdint>

namespace nk {

// LayerNorm over the last axis of x [n, c]: y = (x - mean) * rstd * g + b with
// rstd = 1 / sqrt(mean((x - mean)^2) + eps). Writes y [n, c], mean [n] and rstd [n].
void layer_norm(const float* x, const float* g, const float* b, float eps, int64_t n, int64_t c,
                float* y, float* mean, float* rstd);

// Its backward from dy [n, c]: dx [n, c], dg [c], db [c] (overwritten).
void layer_norm_grad(const float* dy, const float* x, const float* g, const float* mean,
                     const float* rstd, int64_t n, int64_t c, float* dx, float* dg, float* db);

// Causal self-attention of qkv [B*T, 3C] (rows (b, t); columns q | k | v, head h at h*hs within
// each): y [B*T, C] with heads merged, and the attention probabilities att [B, H, T, T] (zero
// above the diagonal), which the backward pass reads.
void attention(const float* qkv, int64_t B, int64_t T, int64_t H, int64_t hs, float* y, float* att);

// Its backward from dy [B*T, C]: dqkv [B*T, 3C] (overwritten).
void attention_grad(const float* dy, const float* qkv, const float* att, int64_t B, int64_t T,
                    int64_t H, int64_t hs, float* dqkv);

// x [B*T, C] = wte[ids] + wpe[t] for ids [B*T] (checked by the caller to lie in [0, V)).
void embed(const float* wte, const float* wpe, const int32_t* ids, int64_t B, int64_t T, int64_t C,
           float* x);

// Its backward: dwte [V, C] (scatter-add of dx rows), dwpe [P, C] (sum over the batch, zero from
// row T on), both overwritten.
void embed_grad(const float* dx, const int32_t* ids, int64_t B, int64_t T, int64_t C, int64_t V,
                int64_t P, float* dwte, float* dwpe);

// Log-probabilities of targets [n] (checked by the caller to lie in [0, v)) under the softmax of
// each row of logits [n, v]: logp [n] and the rows' log-sum-exp lse [n].
void token_log_probs(const float* logits, const int32_t* targets, int64_t n, int64_t v, float* logp,
                     float* lse);

// Its backward from dy [n]: dlogits [n, v] = dy * (onehot(target) - softmax(row)).
void token_log_probs_grad(const float* dy, const float* logits, const int32_t* targets,
                          const float* lse, int64_t n, int64_t v, float* dlogits);

// Sum of squares of every value of `count` arrays (as double).
double sum_squares(const float* const* data, const int64_t* sizes, int count);

struct AdamWStep {
  float lr, beta1, beta2, eps;
  float one_minus_beta1, one_minus_beta2;  // computed in double by the caller, as tfjs does
  float decay;       // p is multiplied by this before the update (1 - lr * weightDecay, or 1)
  float grad_scale;  // gradient clipping factor (1 = none)
  float bc1, bc2;    // bias corrections 1 - beta^step
};

// One AdamW update of n values: writes p1, m1, v1 (which may be p, m, v themselves).
void adamw(const AdamWStep& s, const float* p, const float* g, const float* m, const float* v,
           int64_t n, float* p1, float* m1, float* v1);

// One parameter of `adamw_all`: its values, gradient and moments (n each), and the factor
// p is multiplied by before its update (AdamWStep's decay is not used there).
struct AdamWTensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  float decay;
};

// The AdamW update of every tensor in place (p, m, v overwritten), in one pass split over the
// pool: the same values `adamw` gives each tensor.
void adamw_all(const AdamWStep& s, const AdamWTensor* tensors, int count);

}  // namespace nk
