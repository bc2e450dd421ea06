// Fused GPT decoding: one call runs a batch of sequences, each feeding one or more tokens, through
// the whole model (embeddings, every block, final LayerNorm, LM head tied to wte) against per-sequence
// KV caches held here in native memory. Weights are read in place (the wasm heap), so they are
// always the caller's current values. Same math as model/gpt.ts: pre-LayerNorm blocks, causal
// self-attention, exact (erf) GELU MLP.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sampler.h"

namespace nk {

struct DecoderShape {
  int n_layer, n_head, n_embd, block_size, vocab;
  int head_size() const { return n_embd / n_head; }
};

// Per block, in checkpoint order.
struct LayerWeights {
  const float *ln1_g, *ln1_b, *wqkv, *bqkv, *wo, *bo, *ln2_g, *ln2_b, *wfc, *bfc, *wproj, *bproj;
};

struct DecoderWeights {
  const float *wte, *wpe;  // [V, C], [blockSize, C]
  std::vector<LayerWeights> layers;
  const float *lnf_g, *lnf_b;
};

// Keys and values of one sequence, [nLayer][2][H] planes grown on demand up to blockSize: a key
// plane is [hs][capacity] (transposed, so scores vectorise over positions), a value plane
// [capacity][hs].
class KVCache {
 public:
  KVCache(int n_layer, int n_head, int head_size, int block_size)
      : n_layer_(n_layer), n_head_(n_head), head_size_(head_size), block_size_(block_size) {}
  ~KVCache() { release(); }
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  bool matches(const DecoderShape& s) const {
    return n_layer_ == s.n_layer && n_head_ == s.n_head && head_size_ == s.head_size() &&
           block_size_ == s.block_size;
  }
  int length() const { return length_; }
  int block_size() const { return block_size_; }
  bool released() const { return released_; }
  // A cache in a running asynchronous decode (addon.cc) is released when that step ends, not
  // under it. Both are touched on the JS thread only.
  bool in_flight() const { return in_flight_ > 0; }
  void enter_flight() { ++in_flight_; }
  void leave_flight() {
    if (--in_flight_ == 0 && release_pending_) release();
  }
  void release_when_idle() {
    if (in_flight()) release_pending_ = true;
    else release();
  }
  size_t bytes() const;
  // Room for `tokens` tokens in all (keeps the first length() tokens); false when out of memory.
  bool reserve(int tokens);
  void set_length(int length) { length_ = length; }
  void release();
  int capacity() const { return capacity_; }
  float* keys(int layer, int head) { return at(layer, 0, head); }      // [hs][capacity]
  float* values(int layer, int head) { return at(layer, 1, head); }    // [capacity][hs]

 private:
  float* at(int layer, int kv, int head) {
    return data_ + ((static_cast<size_t>(layer) * 2 + kv) * n_head_ + head) * capacity_ * head_size_;
  }
  const int n_layer_, n_head_, head_size_, block_size_;
  int length_ = 0, capacity_ = 0, in_flight_ = 0;
  bool released_ = false, release_pending_ = false;
  float* data_ = nullptr;
};

struct DecodeBatch {
  int n;                    // sequences
  KVCache* const* caches;   // n distinct caches, each with room for its rows
  const int* rows;          // tokens fed per sequence (>= 1)
  const int32_t* tokens;    // sum(rows) ids, sequence by sequence
  float* logits;            // n x V: next-token logits after each sequence's last token
};

// Next-token sampling of a step's rows (sampler.h's sample_rows arguments): n rows.
struct StepSample {
  const uint8_t* banned;
  const SampleRow* rows;
  int32_t* ids;
};

// Runs the batch; appends to the caches and advances their lengths. The caller has checked
// shapes, token ids, and that every cache has room (KVCache::reserve). With `sample`, each
// sequence's next token is sampled from its logits too, by the thread that computed them.
void decode(const DecoderShape& shape, const DecoderWeights& w, const DecodeBatch& batch, const StepSample* sample = nullptr);

}  // namespace nk
