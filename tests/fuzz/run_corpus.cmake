# SPDX-License-Identifier: MIT
# ctest fuzz.corpus: runs each fuzz target once over its committed corpus. RUNS is a list of
# "executable|arg|arg…" entries; any non-zero exit (a crash, a sanitizer report) fails.
foreach(run ${RUNS})
  string(REPLACE "|" ";" cmd "${run}")
  execute_process(COMMAND ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${cmd} failed (${rc}):\n${out}")
  endif()
  string(REGEX MATCH "replay: [0-9]+ input\\(s\\) ran|Done [0-9]+ runs[^\n]*" summary "${out}")
  string(REPLACE ";" " " shown "${cmd}")
  message(STATUS "${shown}: ${summary}")
endforeach()
