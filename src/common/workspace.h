// The one rule every workspace user follows: a caller's buffer starts with an area of counters
// that must be zero between calls (each call that uses a counter resets it), sized by the
// device alone, so that a buffer shared by calls of different shapes and entry points never
// holds one call's partial results where another counts. Each user's partials follow it.
#pragma once

#include <cstdint>

namespace flashcore::detail {

// Room for 2 * sms int32 counters (a forward split tail counts fewer than sms tiles, a split
// decode fewer than 2 * sms units), 256-byte aligned.
inline int64_t workspace_counter_bytes(int sms) { return (2 * int64_t(sms) * 4 + 255) / 256 * 256; }

}  // namespace flashcore::detail
