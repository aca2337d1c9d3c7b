//! The values `docs/PROTOCOL.md` prints for the test vectors are the ones in
//! the normative vectors file, so the document cannot drift from it.

use serde_json::Value;

const PROTOCOL: &str = include_str!("../../docs/PROTOCOL.md");
const VECTORS: &str = include_str!("vectors/envelope-v1.json");

/// The first ```json block after `marker` in the protocol document.
fn json_block_after(marker: &str) -> Value {
    let at = PROTOCOL
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` is not in docs/PROTOCOL.md"));
    let rest = &PROTOCOL[at..];
    let start = rest.find("```json\n").expect("a json block follows") + "```json\n".len();
    let end = rest[start..].find("```").expect("the json block ends");
    serde_json::from_str(&rest[start..start + end]).unwrap()
}

fn vector(i: usize) -> Value {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    file["vectors"][i].clone()
}

#[test]
fn the_documented_envelopes_are_those_of_the_vectors_file() {
    assert_eq!(
        json_block_after("Example (vector 1 of the test vectors):"),
        vector(0)["envelope"]
    );
    assert_eq!(
        json_block_after("The complete envelope of vector 2:"),
        vector(1)["envelope"]
    );
}

#[test]
fn the_documented_hex_values_are_those_of_the_vectors_file() {
    let compact: String = PROTOCOL.split_whitespace().collect();
    for i in 0..2 {
        let v = vector(i);
        for key in ["signature_hex", "signing_input_hex"] {
            let value = v[key].as_str().unwrap();
            assert!(
                compact.contains(value),
                "vector {}: {key} is not in docs/PROTOCOL.md",
                i + 1
            );
        }
        for field in v["fields"].as_array().unwrap() {
            for key in ["disclosure_hex", "digest_hex"] {
                let value = field[key].as_str().unwrap();
                assert!(
                    compact.contains(value),
                    "vector {}: {key} of `{}` is not in docs/PROTOCOL.md",
                    i + 1,
                    field["name"]
                );
            }
        }
    }
}
