// moss/core/safetensors.hpp: moved to moss/io/ (reader, checkpoint, writer, weight sources).
#pragma once

#include "moss/io/checkpoint.hpp"
#include "moss/io/safetensors.hpp"
#include "moss/io/weights.hpp"
#include "moss/io/writer.hpp"
