# Which Eigen fastinfer accepts: 3.4 (the general_matrix_matrix_product::run
# signature backend/cpu/gemm.hpp calls, static_assert'ed there) up to 5.x.
# Included after find_package(Eigen3 CONFIG) by CMakeLists.txt and by the
# installed fastinfer-config.cmake; sets _fi_eigen_error when Eigen3_VERSION
# is outside that range.
#
# Not find_package(Eigen3 3.4...5): Eigen's Eigen3ConfigVersion.cmake is a
# SameMajorVersion file, which rejects a range whose ends have different
# majors (Debian's 3.4.0 refuses "3.3...5") and rejects any 3.x minimum when it
# is 5.x. So we ask for no version and check it here.
set(FASTINFER_EIGEN_MIN 3.4)
set(FASTINFER_EIGEN_BELOW 6)
set(_fi_eigen_error "")
if(NOT DEFINED Eigen3_VERSION OR Eigen3_VERSION STREQUAL "")
  set(_fi_eigen_error "fastinfer: the Eigen3 package at ${Eigen3_DIR} reports no version (need ${FASTINFER_EIGEN_MIN} to 5.x)")
elseif(Eigen3_VERSION VERSION_LESS FASTINFER_EIGEN_MIN OR NOT Eigen3_VERSION VERSION_LESS FASTINFER_EIGEN_BELOW)
  set(_fi_eigen_error "fastinfer: needs Eigen ${FASTINFER_EIGEN_MIN} to 5.x, found Eigen ${Eigen3_VERSION} at ${Eigen3_DIR}")
endif()
