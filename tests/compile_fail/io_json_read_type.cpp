// expect: JsonRef::read reads integral, floating, bool, std::string and std::vector<std::string> members
#include <vector>

#include "moss/io/json.hpp"

namespace io_json_read_type {
bool read(const moss::io::JsonRef& section, std::vector<int>& out) { return section.read("ids", out); }
}  // namespace io_json_read_type
