//! Bucket-id patterns from the config against bucket ids from aw-server: the matcher agrees
//! with a plain dynamic-programming matcher.
#![no_main]

use aw_sync_samay::privacy::Glob;
use libfuzzer_sys::fuzz_target;

fn reference(p: &[char], t: &[char]) -> bool {
    let mut table = vec![vec![false; t.len() + 1]; p.len() + 1];
    table[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=t.len() {
            table[i][j] = match p[i - 1] {
                '*' => table[i - 1][j] || (j > 0 && table[i][j - 1]),
                '?' => j > 0 && table[i - 1][j - 1],
                c => j > 0 && t[j - 1] == c && table[i - 1][j - 1],
            };
        }
    }
    table[p.len()][t.len()]
}

fuzz_target!(|input: (&str, &str)| {
    let (pattern, id) = input;
    let Ok(glob) = Glob::new(pattern) else {
        assert!(pattern.is_empty() || pattern.contains(['[', ']', '{', '}', '\\']));
        return;
    };
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = id.chars().collect();
    // The reference is quadratic in memory: keep it to inputs it can afford.
    if p.len() * t.len() <= 1 << 20 {
        assert_eq!(glob.matches(id), reference(&p, &t), "{pattern:?} on {id:?}");
    } else {
        let _ = glob.matches(id);
    }
});
