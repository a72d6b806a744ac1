# Warnings are errors for the project's own code. Third-party headers come in
# through imported targets (SYSTEM includes) and are not affected.
add_library(ublkvol_warnings INTERFACE)
target_compile_options(ublkvol_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Werror
  -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused -Woverloaded-virtual
  -Wnull-dereference -Wformat=2 -Wimplicit-fallthrough
  -Wno-missing-field-initializers)
