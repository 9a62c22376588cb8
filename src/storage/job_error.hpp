// One exception object per waiting coroutine, for the stores' group-commit writers.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

#include "core/error.hpp"

namespace statetrack::storage {

// A copy of the exception in `ep` that shares nothing with it: same message, and the same kind
// for a storage_error (the type seen by every caller outside the stores).
//
// When a whole batch fails, every write in it fails with the same error; but the writes'
// coroutines resume on different I/O threads, and an exception object shared between them
// is freed by whichever thread drops the last exception_ptr. The standard makes that safe,
// but libstdc++ counts the references in code ThreadSanitizer does not instrument, so it
// reports the free as a race with the other thread's reads of the message. Giving each write
// its own copy (on the failure path only) leaves nothing shared between threads.
inline std::exception_ptr own_copy(const std::exception_ptr& ep) {
  if (!ep) return ep;
  try {
    std::rethrow_exception(ep);
  } catch (const core::storage_error& e) {
    return std::make_exception_ptr(core::storage_error(e.which(), std::string(e.what())));
  } catch (const std::exception& e) {
    return std::make_exception_ptr(std::runtime_error(std::string(e.what())));
  } catch (...) {
    return ep;
  }
}

}  // namespace statetrack::storage
