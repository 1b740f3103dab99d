# Shell helper for the tests that run Python with the bindings against the
# freshly built library; sourced, not run. Sets $py and $pylib and exports
# DSYS_LIBRARY and PYTHONPATH (plus the ASan preload of a sanitizer build).
# Returns 1 with $pyenv_error set when something is missing.
py=${DSYS_PYTHON:-/usr/bin/python3}
pylib="${top_builddir:-.}/.libs/libdistsys.so"
pyenv_error=
if [ ! -x "$py" ]; then
  pyenv_error="python3 not found at $py (install python3; scripts/install-deps)"
elif [ ! -f "$pylib" ]; then
  pyenv_error="$pylib not built"
else
  export DSYS_LIBRARY="$pylib"
  export PYTHONPATH="${top_srcdir:-.}/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
  # A sanitizer build (--enable-sanitizers): Python loads the library with
  # dlopen, and ASan's runtime must come first in the process, so preload
  # it. Leak checking is off there: the interpreter keeps memory at exit.
  if ldd "$pylib" 2>/dev/null | grep -q libasan; then
    export LD_PRELOAD="$(ldd "$pylib" | awk '/libasan/ {print $3}')${LD_PRELOAD:+ $LD_PRELOAD}"
    # No quarantine, so that freed memory is reused and the RSS-flat checks
    # measure leaks, not ASan holding freed blocks back.
    export ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=0:thread_local_quarantine_size_kb=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export DSYS_RSS_LIMIT_KIB=6144
  fi
fi
[ -z "$pyenv_error" ]
