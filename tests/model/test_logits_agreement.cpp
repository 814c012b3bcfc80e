// LogitsAgreement against hand-computed values: KL(p || q) of two-token
// distributions in closed form, zero for equal rows (also after a shift,
// which softmax ignores), argmax agreement with first-maximum ties.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "fastinfer/model/logits_agreement.hpp"

TEST_CASE("logits agreement: KL divergence and top-1 agreement against closed forms") {
  fastinfer::LogitsAgreement a;
  CHECK(a.rows() == 0);
  CHECK(a.mean_kl() == 0.0);
  const float p[] = {0.0f, 0.0f};                        // (1/2, 1/2)
  const float q[] = {float(std::log(3.0)), 0.0f};        // (3/4, 1/4)
  a.add(p, q, 2);
  const double want = 0.5 * std::log(0.5 / 0.75) + 0.5 * std::log(0.5 / 0.25);
  CHECK(a.mean_kl() == Approx(want).epsilon(1e-6));
  CHECK(a.top1_agreement() == 1.0);  // a tie in p: the first maximum, as q's argmax
  const float shifted[] = {5.0f, 5.0f};
  a.add(p, shifted, 2);
  CHECK(a.mean_kl() == Approx(want / 2).epsilon(1e-6));
  const float r[] = {0.0f, 2.0f};
  a.add(q, r, 2);  // argmax 0 against 1
  CHECK(a.rows() == 3);
  CHECK(a.top1_agreement() == Approx(2.0 / 3.0));
  const double pr0 = 0.75, pr1 = 0.25, q0 = 1.0 / (1.0 + std::exp(2.0)), q1 = 1.0 - q0;
  CHECK(a.mean_kl() == Approx((want + pr0 * std::log(pr0 / q0) + pr1 * std::log(pr1 / q1)) / 3).epsilon(1e-6));
}
