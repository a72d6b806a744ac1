// Project version, set by CMake from project(VERSION ...).
#pragma once

namespace ublkvol {

// "0.1.0"
const char* version_string();

}  // namespace ublkvol
