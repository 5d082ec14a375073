# Writes the short git revision of SRC to OUT, rewriting only on change. A non-empty
# FLASHCORE_GIT_REV in the environment wins: a copied tree (the GPU machine) may carry a stale
# .git of its own. Else git, else "unknown".
if(NOT "$ENV{FLASHCORE_GIT_REV}" STREQUAL "")
  set(rev "$ENV{FLASHCORE_GIT_REV}")
else()
  execute_process(COMMAND git -C "${SRC}" rev-parse --short HEAD
                  OUTPUT_VARIABLE rev OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE rc ERROR_QUIET)
  if(rc EQUAL 0 AND NOT rev STREQUAL "")
    execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no
                    OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(NOT dirty STREQUAL "")
      set(rev "${rev}-dirty")
    endif()
  else()
    set(rev "unknown")
  endif()
endif()
file(WRITE "${OUT}.tmp" "${rev}\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
