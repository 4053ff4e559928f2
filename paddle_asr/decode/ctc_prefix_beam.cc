// The CTC prefix beam search of decode/search.py (`CtcPrefixBeam` without a context graph), compiled:
// the same operations on the same doubles in the same order, so that its beam equals the Python one
// (and so PaddleSpeech's) bit for bit. Loaded through ctypes by decode/compiled_search.py.
//
// Why each detail is as it is:
// * Candidates per frame are paddle.topk's, computed here as Paddle's CPU kernel does
//   (phi/kernels/cpu/top_k_kernel.cc): std::partial_sort when 64 * k < width, else std::nth_element and
//   std::sort of the first k - 1, on (float, int64) pairs compared by value only. The same libstdc++
//   algorithms pick the same tied entries in the same order.
// * log_add is PaddleSpeech's: max, then log of the sum of exp(a - max), summed left to right from 0.
//   Build without -ffast-math, and with -ffp-contract=off: no operation may be fused or reordered.
// * next_hyps keeps Python's dict semantics: an entry is appended on its first write and updated in
//   place after, and the beam is a stable sort on log_add(pb, pnb), best first.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kLog2Bound = 0.75;  // above log(2) plus rounding, as search._LOG2_BOUND
constexpr int kNoToken = -1;

double max2(double a, double b) { return b > a ? b : a; }  // Python's max: the first of equals

double log_add2(double a, double b) {
  if (a == kNegInf && b == kNegInf) return kNegInf;
  double m = max2(a, b);
  double sum = 0.0;
  sum += std::exp(a - m);
  sum += std::exp(b - m);
  return m + std::log(sum);
}

double log_add3(double a, double b, double c) {
  if (a == kNegInf && b == kNegInf && c == kNegInf) return kNegInf;
  double m = max2(max2(a, b), c);
  double sum = 0.0;
  sum += std::exp(a - m);
  sum += std::exp(b - m);
  sum += std::exp(c - m);
  return m + std::log(sum);
}

uint64_t extend_hash(uint64_t h, int token) {  // splitmix64 of the parent's hash and the token
  uint64_t z = h ^ (static_cast<uint64_t>(token) + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Hyp {
  std::vector<int> prefix;
  uint64_t hash = 0;         // of prefix
  uint64_t parent_hash = 0;  // of prefix minus its last token (prefix non-empty)
  double pb = kNegInf, pnb = kNegInf;
  int last() const { return prefix.empty() ? kNoToken : prefix.back(); }
};

// Python's insertion-ordered dict of prefix -> (pb, pnb), for one frame.
class HypTable {
 public:
  void clear() { entries_.clear(); index_.clear(); }
  std::vector<Hyp>& entries() { return entries_; }

  // The entry of `prefix` (hash `hash`), appended with (-inf, -inf) if it is not there yet.
  Hyp& get(const std::vector<int>& prefix, uint64_t hash, uint64_t parent_hash) {
    auto range = index_.equal_range(hash);
    for (auto it = range.first; it != range.second; ++it)
      if (entries_[it->second].prefix == prefix) return entries_[it->second];
    index_.emplace(hash, static_cast<int>(entries_.size()));
    Hyp h;
    h.prefix = prefix;
    h.hash = hash;
    h.parent_hash = parent_hash;
    entries_.push_back(std::move(h));
    return entries_.back();
  }

 private:
  std::vector<Hyp> entries_;
  std::unordered_multimap<uint64_t, int> index_;
};

struct Floor {  // search._beam_floor's BeamFloor
  double floor = kNegInf;
  std::vector<double> bounds;
  std::vector<std::pair<int, int>> extends;
  bool extends_has(int i, int s) const {
    return std::find(extends.begin(), extends.end(), std::make_pair(i, s)) != extends.end();
  }
};

class Beam {
 public:
  Beam(int beam_size, int blank) : beam_size_(beam_size), blank_(blank) {
    Hyp root;
    root.pb = 0.0;
    hyps_.push_back(root);
  }

  void advance(const float* log_probs, int frames, int width) {
    int k = std::min(beam_size_, width);
    std::vector<int> tokens(k);
    std::vector<double> values(k);
    for (int t = 0; t < frames; ++t) {
      topk(log_probs + static_cast<int64_t>(t) * width, width, k, &tokens, &values);
      Floor floor;
      bool prune = beam_floor(tokens, values, &floor);
      step(tokens, values, prune ? &floor : nullptr);
    }
  }

  const std::vector<Hyp>& hyps() const { return hyps_; }

 private:
  void topk(const float* row, int width, int k, std::vector<int>* tokens, std::vector<double>* values) {
    pairs_.clear();
    for (int j = 0; j < width; ++j) pairs_.emplace_back(row[j], static_cast<int64_t>(j));
    auto greater = [](const std::pair<float, int64_t>& l, const std::pair<float, int64_t>& r) {
      return l.first > r.first;
    };
    if (static_cast<int64_t>(k) * 64 < width) {
      std::partial_sort(pairs_.begin(), pairs_.begin() + k, pairs_.end(), greater);
    } else {
      std::nth_element(pairs_.begin(), pairs_.begin() + k - 1, pairs_.end(), greater);
      std::sort(pairs_.begin(), pairs_.begin() + k - 1, greater);
    }
    for (int i = 0; i < k; ++i) {
      (*tokens)[i] = static_cast<int>(pairs_[i].second);
      (*values)[i] = static_cast<double>(pairs_[i].first);
    }
  }

  // search._beam_floor: false where nothing can be skipped.
  bool beam_floor(const std::vector<int>& tokens, const std::vector<double>& values, Floor* f) const {
    int n = static_cast<int>(hyps_.size());
    std::vector<double> bases(n);
    for (int i = 0; i < n; ++i) bases[i] = max2(hyps_[i].pb, hyps_[i].pnb);
    for (int i = 0; i < n; ++i) {  // (index of prefix minus its last token, last token)
      const Hyp& h = hyps_[i];
      if (h.prefix.empty()) continue;
      for (int j = 0; j < n; ++j) {
        const Hyp& p = hyps_[j];
        if (p.hash == h.parent_hash && p.prefix.size() + 1 == h.prefix.size() &&
            std::equal(p.prefix.begin(), p.prefix.end(), h.prefix.begin())) {
          f->extends.emplace_back(j, h.prefix.back());
          break;
        }
      }
    }
    std::vector<double> lower;
    for (size_t c = 0; c < tokens.size(); ++c) {
      int s = tokens[c];
      for (int i = 0; i < n; ++i)
        if (s == blank_ || (hyps_[i].last() != s && !f->extends_has(i, s))) lower.push_back(bases[i] + values[c]);
    }
    if (static_cast<int>(lower.size()) < beam_size_) return false;
    std::nth_element(lower.begin(), lower.begin() + beam_size_ - 1, lower.end(), std::greater<double>());
    f->floor = lower[beam_size_ - 1];
    if (f->floor == kNegInf) return false;
    f->bounds.resize(n);
    for (int i = 0; i < n; ++i) f->bounds[i] = bases[i] + kLog2Bound;
    return true;
  }

  // search.ctc_prefix_step, then the stable sort and cut of CtcPrefixBeam.advance.
  void step(const std::vector<int>& tokens, const std::vector<double>& values, const Floor* prune) {
    next_.clear();
    std::vector<int> extended;
    for (size_t c = 0; c < tokens.size(); ++c) {
      int s = tokens[c];
      double ps = values[c];
      for (size_t i = 0; i < hyps_.size(); ++i) {
        const Hyp& h = hyps_[i];
        double pb = h.pb, pnb = h.pnb;
        int last = h.last();
        if (s == blank_) {
          Hyp& e = next_.get(h.prefix, h.hash, h.parent_hash);
          e.pb = log_add3(e.pb, pb + ps, pnb + ps);
          continue;
        }
        if (prune != nullptr && s != last && prune->bounds[i] + ps < prune->floor &&
            !prune->extends_has(static_cast<int>(i), s))
          continue;
        extended.assign(h.prefix.begin(), h.prefix.end());
        extended.push_back(s);
        uint64_t n_hash = extend_hash(h.hash, s);
        if (s == last) {
          Hyp& same = next_.get(h.prefix, h.hash, h.parent_hash);
          same.pnb = log_add2(same.pnb, pnb + ps);
          Hyp& e = next_.get(extended, n_hash, h.hash);
          e.pnb = log_add2(e.pnb, pb + ps);
        } else {
          Hyp& e = next_.get(extended, n_hash, h.hash);
          e.pnb = log_add3(e.pnb, pb + ps, pnb + ps);
        }
      }
    }
    std::vector<Hyp>& entries = next_.entries();
    std::vector<std::pair<double, int>> order(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) order[i] = {log_add2(entries[i].pb, entries[i].pnb), static_cast<int>(i)};
    std::stable_sort(order.begin(), order.end(),
                     [](const std::pair<double, int>& a, const std::pair<double, int>& b) { return a.first > b.first; });
    size_t keep = std::min(order.size(), static_cast<size_t>(beam_size_));
    std::vector<Hyp> kept;
    kept.reserve(keep);
    for (size_t i = 0; i < keep; ++i) kept.push_back(std::move(entries[order[i].second]));
    hyps_.swap(kept);
  }

  int beam_size_, blank_;
  std::vector<Hyp> hyps_;
  HypTable next_;
  std::vector<std::pair<float, int64_t>> pairs_;
};

}  // namespace

extern "C" {

void* ctc_beam_new(int beam_size, int blank) { return new Beam(beam_size, blank); }

void ctc_beam_free(void* beam) { delete static_cast<Beam*>(beam); }

// log_probs: C-contiguous float32 [frames, width].
void ctc_beam_advance(void* beam, const float* log_probs, int frames, int width) {
  static_cast<Beam*>(beam)->advance(log_probs, frames, width);
}

int ctc_beam_count(const void* beam) { return static_cast<int>(static_cast<const Beam*>(beam)->hyps().size()); }

// Hypothesis i: its length (its tokens copied into `tokens` when they fit in `capacity`), pb, pnb.
int ctc_beam_hyp(const void* beam, int i, int* tokens, int capacity, double* pb, double* pnb) {
  const Hyp& h = static_cast<const Beam*>(beam)->hyps()[i];
  int n = static_cast<int>(h.prefix.size());
  if (n <= capacity) std::copy(h.prefix.begin(), h.prefix.end(), tokens);
  *pb = h.pb;
  *pnb = h.pnb;
  return n;
}

}  // extern "C"
