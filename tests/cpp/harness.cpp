#include "harness.h"

#include <c10/util/Exception.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>

namespace skt {
namespace {

struct Test {
  const char* name;
  TestFn fn;
};

std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

constexpr int64_t kMaxPrinted = 10;
int64_t g_failures = 0;
int64_t g_cases = 0;
std::vector<std::string> g_context;

}  // namespace

Registrar::Registrar(const char* name, TestFn fn) { registry().push_back({name, fn}); }

void fail(const char* file, int line, const char* cond, const std::string& message) {
  ++g_failures;
  if (g_failures > kMaxPrinted) {
    if (g_failures == kMaxPrinted + 1) std::cout << "    ... (further failures in this test not printed)\n";
    return;
  }
  std::cout << "    FAIL " << file << ":" << line << ": " << cond << "\n      " << message << "\n";
  for (const std::string& c : g_context) std::cout << "      in: " << c << "\n";
}

int64_t failures() { return g_failures; }

Context::Context(std::string what) { g_context.push_back(std::move(what)); }
Context::~Context() { g_context.pop_back(); }

void count_case() { ++g_cases; }

}  // namespace skt

int main(int argc, char** argv) {
  using skt::registry;
  std::vector<std::string> filters;
  bool check_covered = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--list") {
      for (const auto& t : registry()) std::cout << t.name << "\n";
      return 0;
    }
    if (arg == "--check-covered") {
      check_covered = true;
      continue;
    }
    filters.push_back(arg);
  }
  auto matches = [&](const char* name) {
    for (const std::string& f : filters)
      if (std::string(name).find(f) != std::string::npos) return true;
    return false;
  };
  if (check_covered) {  // every registered test must match one of the given filters
    int missing = 0;
    for (const auto& t : registry()) {
      if (!matches(t.name)) {
        std::cout << "not run by any ctest entry: " << t.name << "\n";
        ++missing;
      }
    }
    std::cout << registry().size() - missing << " of " << registry().size() << " tests scheduled\n";
    return missing ? 1 : 0;
  }
  int run = 0, failed = 0;
  for (const auto& t : registry()) {
    if (!filters.empty() && !matches(t.name)) continue;
    ++run;
    skt::g_failures = 0;
    skt::g_cases = 0;
    skt::g_context.clear();
    std::cout << "[ RUN  ] " << t.name << std::endl;
    const auto start = std::chrono::steady_clock::now();
    try {
      t.fn();
    } catch (const c10::Error& e) {
      skt::fail(__FILE__, __LINE__, "no unexpected exception",
                std::string("c10::Error: ") + e.what_without_backtrace());
    } catch (const std::exception& e) {
      skt::fail(__FILE__, __LINE__, "no unexpected exception", std::string("std::exception: ") + e.what());
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const bool ok = skt::g_failures == 0;
    failed += ok ? 0 : 1;
    std::printf("[ %s ] %s  (%lld cases, %lld failures, %.0f ms)\n", ok ? " OK " : "FAIL", t.name,
                static_cast<long long>(skt::g_cases), static_cast<long long>(skt::g_failures), ms);
    std::fflush(stdout);
  }
  if (run == 0) {
    std::cout << "no test matched the filters\n";
    return 2;
  }
  std::cout << run - failed << " of " << run << " tests passed\n";
  return failed ? 1 : 0;
}
