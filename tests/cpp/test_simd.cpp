// csrc/cpu/simd.h: the shuffles the kernels build on. load_even feeds the stride-2 plane fill of the conv
// kernels; a lane taken from the wrong position would show there only on the strided shapes the conv tests
// happen to use, and a read past p[2·kLanes − 2] only under the sanitizer build (the array below ends there).
#include <vector>

#include "../../csrc/cpu/simd.h"
#include "harness.h"

namespace {

template <typename T>
void check_load_even(const char* dtype) {
  using S = sparsekern::Simd<T>;
  constexpr int64_t L = S::kLanes;
  skt::Context ctx(c10::str("load_even ", dtype, " lanes=", L));
  skt::count_case();
  std::vector<T> p(2 * L - 1);  // exactly what load_even may read
  for (int64_t i = 0; i < 2 * L - 1; ++i) p[i] = static_cast<T>(100 + i);
  const typename S::vec v = S::load_even(p.data());
  for (int64_t k = 0; k < L; ++k) {
    SKT_CHECK(v[k] == p[2 * k], "lane ", k, ": expected p[", 2 * k, "] = ", p[2 * k], ", got ", v[k]);
  }
}

}  // namespace

SKT_TEST(simd_load_even) {
  check_load_even<float>("float");
  check_load_even<double>("double");
}
