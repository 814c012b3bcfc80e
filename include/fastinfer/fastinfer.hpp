// Umbrella header: everything fastinfer offers, in layer order.
#pragma once

#include "fastinfer/version.hpp"

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/philox.hpp"
#include "fastinfer/core/tensor.hpp"

#include "fastinfer/backend/cpu/convert.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"

#include "fastinfer/model/config.hpp"
#include "fastinfer/model/weights.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/synthetic.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/generate.hpp"
