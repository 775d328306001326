# SPDX-License-Identifier: MIT
# CPACK_POST_BUILD_SCRIPTS: repairs the -dbgsym .ddeb that CPack 3.25 makes.
# - Its md5sums names the debug file by CPack's absolute staging path, so dpkg and lintian
#   see a file that is not in the package (md5sums-lists-nonexistent-file) and miss the
#   one that is: the sums are recomputed with paths relative to the root.
# - Its debug file is executable: it becomes 0644.
# - It has no /usr/share/doc/blockjobd-dbgsym: like the dbgsym packages of debhelper, it
#   gets a symlink to /usr/share/doc/blockjobd (copyright, changelog), which it depends on.
find_program(bjd_dpkg_deb dpkg-deb)
if(NOT bjd_dpkg_deb)
  message(WARNING "dpkg-deb not found: the -dbgsym package keeps CPack's md5sums")
  return()
endif()
foreach(pkg IN LISTS CPACK_PACKAGE_FILES)
  if(NOT pkg MATCHES "-dbgsym_[^/]*\\.ddeb$")
    continue()
  endif()
  set(root "${pkg}.fix")
  file(REMOVE_RECURSE "${root}")
  execute_process(COMMAND ${bjd_dpkg_deb} -R "${pkg}" "${root}" COMMAND_ERROR_IS_FATAL ANY)
  file(GLOB_RECURSE files LIST_DIRECTORIES false RELATIVE "${root}" "${root}/usr/*")
  list(SORT files)
  set(sums "")
  foreach(f IN LISTS files)
    # Debug files are data, as debhelper ships them.
    file(CHMOD "${root}/${f}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
    file(MD5 "${root}/${f}" md5)
    string(APPEND sums "${md5}  ${f}\n")
  endforeach()
  file(WRITE "${root}/DEBIAN/md5sums" "${sums}")
  file(MAKE_DIRECTORY "${root}/usr/share/doc")
  file(CREATE_LINK blockjobd "${root}/usr/share/doc/blockjobd-dbgsym" SYMBOLIC)
  # gzip, as CPack compresses (dpkg-deb's default xz takes minutes on the debug file).
  execute_process(COMMAND ${bjd_dpkg_deb} --root-owner-group -Zgzip -b "${root}" "${pkg}"
                  OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
  file(REMOVE_RECURSE "${root}")
endforeach()
