# cmake -P script: which fastinfer headers each backend-free header may
# include. Standard and POSIX headers are always allowed; xsimd, Eigen,
# OpenMP, CUDA, nlohmann-json, intrinsics and every backend never are.
#
#  - core, memory, prefix, sched, transfer: each other only.
#  - kv: those and kv (the cache's bookkeeping, views and encodings).
#  - the bookkeeping headers of speculative/ (listed by name: draft_model,
#    early_exit_drafter and eagle_head still run compute or pick draft tokens
#    with the host sampler of backend/cpu; medusa_heads runs its products on
#    the caller's backend), those and one another, plus model/forward_batch.hpp
#    and model/config.hpp, plain data checked here too.
#  - backend/cpu: core, memory, kv and backend/ only, never the model,
#    engine or speculative layers above it.
set(_free_layers core memory prefix sched transfer)
set(_kv_layers ${_free_layers} kv)
set(_spec_headers drafter.hpp eagle_tree.hpp head_file.hpp lookahead_pool.hpp medusa_heads.hpp prompt_lookup.hpp
                  speculative_verifier.hpp tree_batch.hpp)
set(_spec_allowed_files model/config.hpp model/forward_batch.hpp)
foreach(_h IN LISTS _spec_headers)
  list(APPEND _spec_allowed_files speculative/${_h})
endforeach()

set(_bad "")
# Checks every header in `headers` against `layers` (whole layers allowed)
# and `files` (single headers allowed, relative to fastinfer/).
function(_check_headers headers layers files)
  foreach(_h IN LISTS headers)
    if(NOT EXISTS ${_h})
      list(APPEND _bad "${_h}: listed here but missing (update tests/check_backend_free.cmake)")
      continue()
    endif()
    file(STRINGS ${_h} _includes REGEX "^[ \t]*#[ \t]*include")
    foreach(_line IN LISTS _includes)
      if(_line MATCHES "#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"]")
        set(_inc "${CMAKE_MATCH_1}")
        if(_inc MATCHES "^fastinfer/(([a-z_]+)/.*)$")
          set(_rel "${CMAKE_MATCH_1}")
          list(FIND layers "${CMAKE_MATCH_2}" _layer_idx)
          list(FIND files "${_rel}" _file_idx)
          if(_layer_idx EQUAL -1 AND _file_idx EQUAL -1)
            list(APPEND _bad "${_h}: ${_inc}")
          endif()
        elseif(_inc MATCHES "^(xsimd|Eigen|eigen3|omp|cuda|nlohmann|CLI|benchmark|catch2|immintrin|[a-z0-9]+intrin)")
          list(APPEND _bad "${_h}: ${_inc}")
        endif()
      endif()
    endforeach()
  endforeach()
  set(_bad "${_bad}" PARENT_SCOPE)
endfunction()

foreach(_layer IN LISTS _kv_layers)
  file(GLOB_RECURSE _headers ${INCLUDE_DIR}/fastinfer/${_layer}/*.hpp)
  if(_layer STREQUAL "kv")
    _check_headers("${_headers}" "${_kv_layers}" "")
  else()
    _check_headers("${_headers}" "${_free_layers}" "")
  endif()
endforeach()

set(_spec_paths "")
foreach(_f IN LISTS _spec_allowed_files)
  list(APPEND _spec_paths ${INCLUDE_DIR}/fastinfer/${_f})
endforeach()
_check_headers("${_spec_paths}" "${_kv_layers}" "${_spec_allowed_files}")

file(GLOB_RECURSE _cpu_headers ${INCLUDE_DIR}/fastinfer/backend/cpu/*.hpp)
set(_cpu_bad "")
foreach(_h IN LISTS _cpu_headers)
  file(STRINGS ${_h} _includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]fastinfer/")
  foreach(_line IN LISTS _includes)
    if(_line MATCHES "fastinfer/([a-z_]+)/" AND NOT CMAKE_MATCH_1 MATCHES "^(core|memory|kv|backend)$")
      list(APPEND _bad "${_h}: ${_line} (a kernel must not include a layer above it)")
    endif()
  endforeach()
endforeach()

if(_bad)
  string(REPLACE ";" "\n  " _msg "${_bad}")
  message(FATAL_ERROR "backend-free headers include what they must not:\n  ${_msg}")
endif()
string(REPLACE ";" " " _msg_spec "${_spec_headers}")
message(STATUS "backend-free: ${_free_layers} kv, speculative/ {${_msg_spec}}; backend/cpu includes no layer above it")
