// The ULD distance Σ_r |p_S↓(r) − p_T↓(r)| of probability rows and its gradient w.r.t. the student entries,
// from value bins, one row at a time: the same layer-cake computation as `distill/losses/sorting.py` (its module
// docstring has the math), with each row's passes fused into loops over the row's entries. Built on first use by
// `distill/losses/native.py`; the torch route in sorting.py stays the reference and the fallback.
//
// Per row: (1) the least and greatest bit patterns (non-negative floats order as their bits), (2) counts and
// Σ (p − lo) per bin, (3) a sweep of the bins from the top: D = N_S − N_T just below a bin's top is the difference
// of the counts above it; a bin where D keeps one sign is integrated in closed form and gives its student entries
// that sign, (4) the entries of the other ("mixed") bins are sorted within their bin and integrated gap by gap;
// a student entry tied with others gets the mean of c(r) over its tie class's ranks.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

template <typename F>
struct Bits;
template <>
struct Bits<float> {
  using U = uint32_t;
  static constexpr int mantissa = 23;
};
template <>
struct Bits<double> {
  using U = uint64_t;
  static constexpr int mantissa = 52;
};

template <typename F>
inline typename Bits<F>::U bits_of(F x) {
  typename Bits<F>::U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <typename F>
inline F from_bits(typename Bits<F>::U u) {
  F x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

struct Entry {
  double value;
  int64_t column;  // the student column, or -1 for a teacher entry
};

struct MixedBin {
  int64_t bin, begin, end, above_s, above_t;
};

template <typename F>
struct Work {
  std::vector<int32_t> count_s, count_t;
  std::vector<double> offset;  // Σ_S (p − lo) − Σ_T (p − lo) per bin
  std::vector<double> edge;    // lower edge of each bin, and the top of the last
  std::vector<int8_t> sign;    // +1 / -1: D keeps that sign on the bin; 0: mixed
  std::vector<int64_t> cursor;
  std::vector<MixedBin> mixed;
  std::vector<Entry> entries;
};

// Widen [lo, hi] to cover the bit patterns of x[0..n).
template <typename F>
void widen_bit_range(const F* x, int64_t n, typename Bits<F>::U& lo, typename Bits<F>::U& hi) {
  for (int64_t i = 0; i < n; ++i) {
    const typename Bits<F>::U u = bits_of(x[i]);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
}

// A bin key keeps up to kMaxKeyBits mantissa bits (2^10 bins per octave), fewer while a row would need more than
// 2·(Vs + Vt) + 1024 bins (rows spanning many octaves): the sweep over the bins stays within a few times the entries.
constexpr int kMaxKeyBits = 10;

template <typename F>
int one_row(const F* s, const F* t, int64_t vs, int64_t vt, double* value, F* signs, Work<F>& w) {
  using U = typename Bits<F>::U;
  const U sign_bit = U(1) << (8 * sizeof(U) - 1);
  const U inf_bits = bits_of<F>(std::numeric_limits<F>::infinity());
  U lo = ~U(0), hi = 0;
  widen_bit_range(s, vs, lo, hi);
  if (hi & sign_bit) return 1;  // a negative value's bits are above every non-negative one's
  widen_bit_range(t, vt, lo, hi);
  if (hi & sign_bit) return 2;
  if (hi >= inf_bits) {  // inf or NaN entries: the row's value and gradient are NaN
    *value = std::numeric_limits<double>::quiet_NaN();
    if (signs) std::fill(signs, signs + vs, std::numeric_limits<F>::quiet_NaN());
    return 0;
  }
  const int64_t max_bins = 2 * (vs + vt) + 1024;
  int shift = Bits<F>::mantissa - kMaxKeyBits;
  while (shift < Bits<F>::mantissa && int64_t((hi >> shift) - (lo >> shift)) + 1 > max_bins) ++shift;
  const U key_lo = lo >> shift;
  const int64_t width = int64_t((hi >> shift) - key_lo) + 1;
  w.count_s.assign(width, 0);
  w.count_t.assign(width, 0);
  w.offset.assign(width, 0.0);
  w.edge.resize(width + 1);
  const double top_value = double(std::numeric_limits<F>::max());
  for (int64_t k = 0; k <= width; ++k) {
    const U edge_bits = (key_lo + U(k)) << shift;
    w.edge[k] = edge_bits >= inf_bits ? top_value : double(from_bits<F>(edge_bits));
  }
  for (int64_t i = 0; i < vs; ++i) {
    const int64_t k = int64_t((bits_of(s[i]) >> shift) - key_lo);
    ++w.count_s[k];
    w.offset[k] += double(s[i] - F(w.edge[k]));  // exact: p and its bin's edge share a binade
  }
  for (int64_t i = 0; i < vt; ++i) {
    const int64_t k = int64_t((bits_of(t[i]) >> shift) - key_lo);
    ++w.count_t[k];
    w.offset[k] -= double(t[i] - F(w.edge[k]));
  }
  // sweep from the top: `as`, `at` count the entries in the bins above
  w.sign.assign(width, 0);
  w.mixed.clear();
  double integral = 0.0;
  int64_t as = 0, at = 0, num_mixed = 0;
  for (int64_t k = width - 1; k >= 0; --k) {
    const int64_t cs = w.count_s[k], ct = w.count_t[k], d = as - at;
    if (d - ct >= 0 || d + cs <= 0) {
      w.sign[k] = d - ct >= 0 ? 1 : -1;
      integral += std::fabs(double(d) * (w.edge[k + 1] - w.edge[k]) + w.offset[k]);
    } else {
      w.mixed.push_back({k, num_mixed, num_mixed + cs + ct, as, at});
      num_mixed += cs + ct;
    }
    as += cs;
    at += ct;
  }
  integral += std::fabs(double(vs - vt)) * w.edge[0];  // [0, lowest edge): only the padding differs
  if (num_mixed) {
    w.cursor.assign(width, -1);
    for (const MixedBin& m : w.mixed) w.cursor[m.bin] = m.begin;
    w.entries.resize(num_mixed);
  }
  for (int64_t i = 0; i < vs; ++i) {
    const int64_t k = int64_t((bits_of(s[i]) >> shift) - key_lo);
    if (w.sign[k] != 0) {
      if (signs) signs[i] = F(w.sign[k]);
    } else {
      w.entries[w.cursor[k]++] = {double(s[i]), i};
    }
  }
  if (num_mixed) {
    for (int64_t i = 0; i < vt; ++i) {
      const int64_t k = int64_t((bits_of(t[i]) >> shift) - key_lo);
      if (w.sign[k] == 0) w.entries[w.cursor[k]++] = {double(t[i]), -1};
    }
  }
  for (const MixedBin& m : w.mixed) {
    Entry* first = w.entries.data() + m.begin;
    Entry* last = w.entries.data() + m.end;
    std::sort(first, last, [](const Entry& a, const Entry& b) { return a.value > b.value; });
    int64_t seen_s = 0, seen_t = 0;
    double above = w.edge[m.bin + 1];
    for (Entry* run = first; run != last;) {
      const double v = run->value;
      int64_t ns = 0, nt = 0;
      Entry* end = run;
      for (; end != last && end->value == v; ++end) (end->column >= 0 ? ns : nt) += 1;
      const int64_t d = (m.above_s + seen_s) - (m.above_t + seen_t);  // D on the gap above v
      integral += std::fabs(double(d)) * (above - v);
      if (signs && ns) {
        // the run's student entries hold ranks (a, e]; c(r) = -1 for r <= #{p_T > v}, +1 for r > #{p_T >= v}
        const int64_t a = m.above_s + seen_s, e = a + ns;
        const int64_t t_gt = m.above_t + seen_t, t_ge = t_gt + nt;
        const int64_t plus = std::max<int64_t>(0, e - std::max(a, t_ge));
        const int64_t minus = std::max<int64_t>(0, std::min(e, t_gt) - a);
        const F c = F(double(plus - minus) / double(ns));
        for (Entry* x = run; x != end; ++x)
          if (x->column >= 0) signs[x->column] = c;
      }
      seen_s += ns;
      seen_t += nt;
      above = v;
      run = end;
    }
    const int64_t d = (m.above_s + seen_s) - (m.above_t + seen_t);
    integral += std::fabs(double(d)) * (above - w.edge[m.bin]);
  }
  *value = integral;
  return 0;
}

template <typename F>
int rows(const F* s, const F* t, int64_t n, int64_t vs, int64_t vt, double* value, F* signs) {
  Work<F> work;
  for (int64_t r = 0; r < n; ++r) {
    const int status = one_row(s + r * vs, t + r * vt, vs, vt, value + r, signs ? signs + r * vs : nullptr, work);
    if (status) return status;
  }
  return 0;
}

}  // namespace

// `s [n, vs]`, `t [n, vt]` contiguous; writes `value [n]` and, unless `signs` is null, `signs [n, vs]`.
// Returns 0, or 1 / 2 when the student / teacher rows hold a negative value.
extern "C" int uld_rows_f32(const float* s, const float* t, int64_t n, int64_t vs, int64_t vt, double* value,
                            float* signs) {
  return rows<float>(s, t, n, vs, vt, value, signs);
}

extern "C" int uld_rows_f64(const double* s, const double* t, int64_t n, int64_t vs, int64_t vt, double* value,
                            double* signs) {
  return rows<double>(s, t, n, vs, vt, value, signs);
}
