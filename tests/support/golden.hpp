// The golden-case reader of examples/common/golden.hpp under the tests'
// namespace: one reader for the example programs and the tests.
#pragma once

#include "common/golden.hpp"

namespace fastinfer::testing {

using examples::golden_ids;
using examples::golden_unescape;
using examples::GoldenCase;
using examples::read_golden_case;
using examples::read_golden_cases;
using examples::read_golden_fields;

}  // namespace fastinfer::testing
