#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| samverkan_gateway_fuzz::check(data));
