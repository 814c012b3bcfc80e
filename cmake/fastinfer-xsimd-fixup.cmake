# Debian's xsimd 8 export names an "xtl" link dependency even though xsimd is
# usable without xtl (and libxsimd-dev does not depend on xtl-dev). When no
# xtl target exists, drop that name so that linking does not look for -lxtl.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_fi_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_fi_xsimd_libs)
    list(REMOVE_ITEM _fi_xsimd_libs xtl)
    set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${_fi_xsimd_libs}")
  endif()
endif()
