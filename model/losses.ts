/**
 * Token-level losses and log-probabilities shared by pretraining, SFT, the reward model and PPO.
 */
import * as tf from '@tensorflow/tfjs-core';
import { fusedTokenLogProbs, trainingOpsAvailable } from './kernels/training-ops.ts';

/**
 * Log-probabilities of `targets` under `logits`: `[N, V]`, `[N]` int32 → `[N]`.
 * Picks with a one-hot product (no gather gradient on wasm); one fused native op (forward and
 * backward) where the training ops run (model/kernels/training-ops.ts).
 */
export function tokenLogProbs(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  if (trainingOpsAvailable() && logits.dtype === 'float32') return fusedTokenLogProbs(logits, targets);
  const logp = tf.logSoftmax(logits); // [N, V]
  const onehot = tf.oneHot(targets, logits.shape[1]); // [N, V]
  return tf.sum(tf.mul(logp, onehot), 1) as tf.Tensor1D;
}

/** Per-row entropy of the softmax of `logits`: `[N, V]` → `[N]`. */
export function entropy(logits: tf.Tensor2D): tf.Tensor1D {
  const logp = tf.logSoftmax(logits);
  return tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), 1)) as tf.Tensor1D;
}

/**
 * Mean cross-entropy over the rows where `weights` > 0: `[N, V]`, `[N]`, `[N]` → scalar.
 * Weights are 0/1 masks (assistant tokens only for SFT; all ones for pretraining).
 */
export function maskedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar {
  const nll = tf.neg(tokenLogProbs(logits, targets));
  return tf.div(tf.sum(tf.mul(nll, weights)), tf.maximum(tf.sum(weights), 1)) as tf.Scalar;
}
