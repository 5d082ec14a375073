# Writes the short git revision of SRC to OUT, rewriting only on change. Where SRC is no git
# checkout (a copied tree, as on the GPU machine) the environment's FLASHCORE_GIT_REV is used,
# else "unknown".
execute_process(COMMAND git -C "${SRC}" rev-parse --short HEAD
                OUTPUT_VARIABLE rev OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE rc ERROR_QUIET)
if(rc EQUAL 0 AND NOT rev STREQUAL "")
  execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no
                  OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT dirty STREQUAL "")
    set(rev "${rev}-dirty")
  endif()
elseif(DEFINED ENV{FLASHCORE_GIT_REV})
  set(rev "$ENV{FLASHCORE_GIT_REV}")
else()
  set(rev "unknown")
endif()
file(WRITE "${OUT}.tmp" "${rev}\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
