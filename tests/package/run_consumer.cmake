# cmake -P script: install (if MODE=find_package), configure, build and run the consumer.
file(REMOVE_RECURSE ${WORK})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${WORK}/prefix)
  run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK}/build -DCMAKE_PREFIX_PATH=${WORK}/prefix
      -DFASTINFER_CONSUMER_MODE=find_package)
else()
  run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK}/build -DFASTINFER_CONSUMER_MODE=add_subdirectory
      -DFASTINFER_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK}/build)
run(${WORK}/build/consumer)
