// A tiny test harness: SKT_TEST registers a test function, SKT_CHECK records a failure (with file, line,
// the failed condition, a message and the current context) and carries on, so one run shows every broken
// case. No external dependency, so CI needs nothing beyond torch and a compiler.
//
//   sparsekern_cpp_tests [substring ...]   runs the tests whose name contains any substring (all if none)
//   sparsekern_cpp_tests --list            prints the test names
//   sparsekern_cpp_tests --check-covered f...   fails if a test matches none of the filters f
#pragma once

#include <c10/util/StringUtil.h>

#include <cstdint>
#include <string>
#include <vector>

namespace skt {

using TestFn = void (*)();

struct Registrar {
  Registrar(const char* name, TestFn fn);
};

// Records one failure; prints at most a few per test so a systematic bug does not flood the log.
void fail(const char* file, int line, const char* cond, const std::string& message);

// Number of failures recorded so far in the running test.
int64_t failures();

// A description of the case being run ("csr_spmm float 7x13 sparsity=0.5 batch=131 threads=3"), printed
// with every failure. Scoped: the destructor pops it.
class Context {
 public:
  explicit Context(std::string what);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};

// Counts the cases a test ran, so the summary shows the tests did real work.
void count_case();

}  // namespace skt

#define SKT_CONCAT_(a, b) a##b
#define SKT_CONCAT(a, b) SKT_CONCAT_(a, b)

#define SKT_TEST(name)                                                    \
  static void name();                                                     \
  static const ::skt::Registrar SKT_CONCAT(name, _registrar)(#name, &name); \
  static void name()

#define SKT_CHECK(cond, ...)                                                   \
  do {                                                                         \
    if (!(cond)) ::skt::fail(__FILE__, __LINE__, #cond, ::c10::str(__VA_ARGS__)); \
  } while (0)
