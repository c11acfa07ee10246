// How the mechanism layer reports failure: an errno and what was being done.
// Binding code turns a Status into a JS Error with `code` = the errno's name.
#pragma once

#include <cerrno>
#include <string>
#include <utility>

namespace daxmap {

struct Status {
  int err = 0;       // 0: success; else a positive errno value
  std::string what;  // "mmap device range", "UFFDIO_COPY", ...
  std::string code;  // errno name override (e.g. "EUFFD"); empty: derived from err
  bool ok() const { return err == 0; }
  static Status Ok() { return {}; }
  static Status Errno(int e, std::string w) { return Status{e, std::move(w), {}}; }
  static Status Coded(int e, std::string c, std::string w) { return Status{e, std::move(w), std::move(c)}; }
};

// The errno's symbolic name ("ENOENT"), or "E<n>" when unknown.
const char* ErrnoName(int err);

}  // namespace daxmap
