//! Named arrays to and from a safetensors blob: F32 (weights, deltas, scales), I8 (quantised
//! values) and U32 (fixed-point masked values), each flattened. What the names must be is the
//! caller's check against the round's trainable tensors; this module checks that the blob is a
//! safetensors file of at most [`MAX_TENSORS`] such arrays with finite floats.

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;

/// Most tensors in one blob.
pub const MAX_TENSORS: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U32(Vec<u32>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::F32(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn dtype(&self) -> Dtype {
        match self {
            Array::F32(_) => Dtype::F32,
            Array::I8(_) => Dtype::I8,
            Array::U32(_) => Dtype::U32,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            Array::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Array::I8(v) => v.iter().map(|x| *x as u8).collect(),
            Array::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("not a safetensors blob: {0}")]
    Format(String),
    #[error("{0} tensors; at most {MAX_TENSORS}")]
    TooMany(usize),
    #[error("tensor {name}: dtype {dtype} is not F32, I8 or U32")]
    Dtype { name: String, dtype: String },
    #[error("tensor {name}: a value is not finite")]
    NotFinite { name: String },
}

/// A safetensors blob of `tensors` (each 1-D) with `metadata`.
pub fn encode(
    tensors: &[(String, Array)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, TensorError> {
    encode_shaped(tensors, &BTreeMap::new(), metadata)
}

/// The shape of every tensor of a safetensors blob.
pub fn shapes(bytes: &[u8]) -> Result<BTreeMap<String, Vec<usize>>, TensorError> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TensorError::Format(e.to_string()))?;
    Ok(tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect())
}

/// [`encode`] with the shape of each tensor named in `shapes` (a model's head keeps its
/// matrices' shapes); a shape whose element count differs from the array's is an error.
pub fn encode_shaped(
    tensors: &[(String, Array)],
    shapes: &BTreeMap<String, Vec<usize>>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, TensorError> {
    if tensors.len() > MAX_TENSORS {
        return Err(TensorError::TooMany(tensors.len()));
    }
    let data: Vec<(String, Dtype, usize, Vec<u8>)> = tensors
        .iter()
        .map(|(name, array)| (name.clone(), array.dtype(), array.len(), array.bytes()))
        .collect();
    let views = data
        .iter()
        .map(|(name, dtype, len, bytes)| {
            let shape = match shapes.get(name) {
                Some(shape) if shape.iter().product::<usize>() == *len => shape.clone(),
                Some(shape) => {
                    return Err(TensorError::Format(format!(
                        "tensor {name}: shape {shape:?} does not hold {len} values"
                    )))
                }
                None => vec![*len],
            };
            TensorView::new(*dtype, shape, bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| TensorError::Format(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| TensorError::Format(e.to_string()))
}

/// The arrays of a blob received from outside, by name, and its metadata.
pub fn decode(
    bytes: &[u8],
) -> Result<(BTreeMap<String, Array>, BTreeMap<String, String>), TensorError> {
    let (_, parsed_metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| TensorError::Format(e.to_string()))?;
    let metadata: BTreeMap<String, String> = parsed_metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TensorError::Format(e.to_string()))?;
    if tensors.len() > MAX_TENSORS {
        return Err(TensorError::TooMany(tensors.len()));
    }
    let mut out = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        let data = view.data();
        let array = match view.dtype() {
            Dtype::F32 => {
                let values: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(TensorError::NotFinite { name });
                }
                Array::F32(values)
            }
            Dtype::I8 => Array::I8(data.iter().map(|b| *b as i8).collect()),
            Dtype::U32 => Array::U32(
                data.chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            other => {
                return Err(TensorError::Dtype {
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.insert(name, array);
    }
    Ok((out, metadata))
}

/// The tensors of a head blob (weights or a float32 delta), which must all be F32.
pub fn decode_f32(bytes: &[u8]) -> Result<BTreeMap<String, Vec<f32>>, TensorError> {
    let (arrays, _) = decode(bytes)?;
    arrays
        .into_iter()
        .map(|(name, array)| match array {
            Array::F32(values) => Ok((name, values)),
            other => Err(TensorError::Dtype {
                name,
                dtype: format!("{:?}", other)
                    .split('(')
                    .next()
                    .unwrap_or("?")
                    .to_string(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_metadata_round_trip() {
        let tensors = vec![
            ("w1".to_string(), Array::F32(vec![0.5, -1.25, 3.0])),
            ("w1.q8".to_string(), Array::I8(vec![-127, 0, 5])),
            ("w1.masked".to_string(), Array::U32(vec![u32::MAX, 7])),
        ];
        let metadata = BTreeMap::from([("encoding".to_string(), "f32".to_string())]);
        let blob = encode(&tensors, &metadata).unwrap();
        let (decoded, meta) = decode(&blob).unwrap();
        assert_eq!(meta, metadata);
        assert_eq!(decoded.len(), 3);
        for (name, array) in tensors {
            assert_eq!(decoded[&name], array);
        }
    }

    #[test]
    fn shapes_are_kept_when_given_and_must_hold_the_values() {
        let tensors = vec![("w".to_string(), Array::F32(vec![1.0; 6]))];
        let shapes = BTreeMap::from([("w".to_string(), vec![2, 3])]);
        let blob = encode_shaped(&tensors, &shapes, &BTreeMap::new()).unwrap();
        assert_eq!(super::shapes(&blob).unwrap()["w"], vec![2, 3]);
        let wrong = BTreeMap::from([("w".to_string(), vec![4, 2])]);
        assert!(encode_shaped(&tensors, &wrong, &BTreeMap::new()).is_err());
    }

    #[test]
    fn non_finite_floats_and_junk_are_refused() {
        let blob = encode(
            &[("w".to_string(), Array::F32(vec![1.0, f32::NAN]))],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            decode(&blob).unwrap_err(),
            TensorError::NotFinite { name: "w".into() }
        );
        assert!(matches!(
            decode(b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk"),
            Err(TensorError::Format(_))
        ));
        for cut in 0..blob.len() {
            let _ = decode(&blob[..cut]);
        }
    }
}
