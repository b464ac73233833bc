//! Fails when the build missed the SIMD path the CPU has: the `wide` kernels
//! are compiled for AVX2 + FMA (`.cargo/config.toml`); a build without them
//! on a CPU that has them would silently run the slow SSE fallback.

#[test]
fn avx2_and_fma_are_compiled_in_where_the_cpu_has_them() {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let build = cfg!(target_feature = "avx2") && cfg!(target_feature = "fma");
        eprintln!("cpu has avx2+fma: {cpu}; build uses them: {build}");
        assert!(
            !cpu || build,
            "this CPU has AVX2 and FMA but the build does not use them (see .cargo/config.toml)"
        );
    }
}
