# UBLKVOL_SANITIZE selects a sanitizer build: "address,undefined" or "thread".
# Applied globally so that every object (including GoogleTest's main in our
# test binaries) agrees on the runtime.
if(UBLKVOL_SANITIZE)
  if(UBLKVOL_SANITIZE MATCHES "thread" AND UBLKVOL_SANITIZE MATCHES "address")
    message(FATAL_ERROR "UBLKVOL_SANITIZE: thread and address cannot be combined")
  endif()
  set(_san_flags -fsanitize=${UBLKVOL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_compile_options(${_san_flags})
  add_link_options(${_san_flags})
  add_compile_definitions(UBLKVOL_SANITIZER_BUILD=1)
  message(STATUS "Sanitizers: ${UBLKVOL_SANITIZE}")
endif()
