//! Post-processing of a label grid, per class: keep the largest connected component, drop
//! components below a size, fill holes. Connected components are found with an explicit stack
//! (no recursion), so a large mask cannot overflow the thread's stack.

use super::grid::Grid;
use super::manifest::PostStep;

/// Apply `steps` in order to `labels` (0 = background), each class on its own.
pub fn apply(labels: &mut Grid<u8>, steps: &[PostStep]) {
    let classes: Vec<u8> = {
        let mut seen = [false; 256];
        labels.data.iter().for_each(|l| seen[*l as usize] = true);
        (1..=255u8).filter(|c| seen[*c as usize]).collect()
    };
    for step in steps {
        for &class in &classes {
            match step {
                PostStep::LargestComponent { connectivity } => {
                    keep_largest(labels, class, *connectivity)
                }
                PostStep::MinComponentVoxels { voxels } => drop_small(labels, class, *voxels),
                PostStep::FillHoles {} => fill_holes(labels, class),
            }
        }
    }
}

/// Neighbour offsets for 6, 18 or 26 connectivity.
fn offsets(connectivity: u8) -> Vec<[isize; 3]> {
    let mut out = Vec::new();
    for di in -1isize..=1 {
        for dj in -1isize..=1 {
            for dk in -1isize..=1 {
                let n = di.abs() + dj.abs() + dk.abs();
                let keep = match connectivity {
                    6 => n == 1,
                    18 => n == 1 || n == 2,
                    _ => n >= 1,
                };
                if keep {
                    out.push([di, dj, dk]);
                }
            }
        }
    }
    out
}

/// Components of the voxels where `member` holds: one id per voxel (0 = not a member) and the
/// size of each component (index = id − 1). Ids follow the C-order scan. Interior voxels take
/// their neighbours by flat offsets; only voxels on the grid's faces check bounds.
fn components(
    grid: &Grid<u8>,
    member: impl Fn(u8) -> bool,
    connectivity: u8,
) -> (Vec<u32>, Vec<usize>) {
    let [a, b, c] = grid.shape;
    let neighbours = offsets(connectivity);
    let flat: Vec<isize> = neighbours
        .iter()
        .map(|[di, dj, dk]| (di * b as isize + dj) * c as isize + dk)
        .collect();
    let mut ids = vec![0u32; grid.data.len()];
    let mut sizes = Vec::new();
    let mut stack: Vec<u32> = Vec::new();
    for start in 0..grid.data.len() {
        if ids[start] != 0 || !member(grid.data[start]) {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0;
        ids[start] = id;
        stack.push(start as u32);
        while let Some(v) = stack.pop() {
            let v = v as usize;
            size += 1;
            let (i, j, k) = (v / (b * c), (v / c) % b, v % c);
            let interior = i > 0 && j > 0 && k > 0 && i + 1 < a && j + 1 < b && k + 1 < c;
            if interior {
                for d in &flat {
                    let n = (v as isize + d) as usize;
                    if ids[n] == 0 && member(grid.data[n]) {
                        ids[n] = id;
                        stack.push(n as u32);
                    }
                }
                continue;
            }
            for [di, dj, dk] in &neighbours {
                let (ni, nj, nk) = (i as isize + di, j as isize + dj, k as isize + dk);
                if ni < 0 || nj < 0 || nk < 0 {
                    continue;
                }
                let (ni, nj, nk) = (ni as usize, nj as usize, nk as usize);
                if ni >= a || nj >= b || nk >= c {
                    continue;
                }
                let n = (ni * b + nj) * c + nk;
                if ids[n] == 0 && member(grid.data[n]) {
                    ids[n] = id;
                    stack.push(n as u32);
                }
            }
        }
        sizes.push(size);
    }
    (ids, sizes)
}

fn keep_largest(labels: &mut Grid<u8>, class: u8, connectivity: u8) {
    let (ids, sizes) = components(labels, |l| l == class, connectivity);
    // The first of equally large components wins (the earliest in the scan).
    let Some(largest) = sizes
        .iter()
        .enumerate()
        .fold(None::<(usize, usize)>, |best, (i, s)| match best {
            Some((_, b)) if b >= *s => best,
            _ => Some((i, *s)),
        })
        .map(|(i, _)| i as u32 + 1)
    else {
        return;
    };
    for (l, id) in labels.data.iter_mut().zip(&ids) {
        if *id != 0 && *id != largest {
            *l = 0;
        }
    }
}

fn drop_small(labels: &mut Grid<u8>, class: u8, min: usize) {
    let (ids, sizes) = components(labels, |l| l == class, 26);
    for (l, id) in labels.data.iter_mut().zip(&ids) {
        if *id != 0 && sizes[*id as usize - 1] < min {
            *l = 0;
        }
    }
}

/// Background voxels that no 6-connected path of non-`class` voxels links to the grid's border
/// become `class` (voxels of other classes stay): one flood from every face voxel that is not
/// of the class.
fn fill_holes(labels: &mut Grid<u8>, class: u8) {
    let [a, b, c] = labels.shape;
    let mut reached = vec![false; labels.data.len()];
    let mut stack: Vec<u32> = Vec::new();
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                let face = i == 0 || j == 0 || k == 0 || i + 1 == a || j + 1 == b || k + 1 == c;
                let v = (i * b + j) * c + k;
                if face && labels.data[v] != class && !reached[v] {
                    reached[v] = true;
                    stack.push(v as u32);
                }
            }
        }
    }
    let steps: [(usize, isize); 6] = [
        (0, -((b * c) as isize)),
        (0, (b * c) as isize),
        (1, -(c as isize)),
        (1, c as isize),
        (2, -1),
        (2, 1),
    ];
    while let Some(v) = stack.pop() {
        let v = v as usize;
        let at = [v / (b * c), (v / c) % b, v % c];
        for (axis, step) in steps {
            let inside = if step < 0 {
                at[axis] > 0
            } else {
                at[axis] + 1 < labels.shape[axis]
            };
            if !inside {
                continue;
            }
            let n = (v as isize + step) as usize;
            if !reached[n] && labels.data[n] != class {
                reached[n] = true;
                stack.push(n as u32);
            }
        }
    }
    for (l, r) in labels.data.iter_mut().zip(&reached) {
        if *l == 0 && !*r {
            *l = class;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(shape: [usize; 3], on: &[[usize; 3]]) -> Grid<u8> {
        let mut g = Grid::filled(shape, 0u8);
        for [i, j, k] in on {
            let at = g.index(*i, *j, *k);
            g.data[at] = 1;
        }
        g
    }

    #[test]
    fn largest_component_depends_on_connectivity() {
        // Two voxels touching only at a corner, and a separate pair.
        let on = [[0, 0, 0], [1, 1, 1], [3, 3, 3], [3, 3, 2]];
        let mut g6 = grid([4, 4, 4], &on);
        apply(&mut g6, &[PostStep::LargestComponent { connectivity: 6 }]);
        assert_eq!(g6.data.iter().filter(|v| **v == 1).count(), 2);
        assert_eq!(g6.data[g6.index(3, 3, 3)], 1);
        let mut g26 = grid([4, 4, 4], &on);
        apply(&mut g26, &[PostStep::LargestComponent { connectivity: 26 }]);
        // Both components have 2 voxels: the first in scan order stays.
        assert_eq!(g26.data[g26.index(0, 0, 0)], 1);
        assert_eq!(g26.data[g26.index(3, 3, 3)], 0);
    }

    #[test]
    fn holes_are_filled_but_background_reaching_the_border_is_not() {
        // A closed 3x3x3 shell with an empty centre, and a cup open to the border.
        let mut on = Vec::new();
        for i in 1..4 {
            for j in 1..4 {
                for k in 1..4 {
                    if [i, j, k] != [2, 2, 2] {
                        on.push([i, j, k]);
                    }
                }
            }
        }
        let mut g = grid([5, 5, 5], &on);
        apply(&mut g, &[PostStep::FillHoles {}]);
        assert_eq!(g.data[g.index(2, 2, 2)], 1);
        let mut cup = grid(
            [3, 3, 3],
            &on.iter()
                .map(|p| [p[0] - 1, p[1] - 1, p[2] - 1])
                .collect::<Vec<_>>(),
        );
        let at = cup.index(1, 1, 2);
        cup.data[at] = 0;
        let centre = cup.index(1, 1, 1);
        // The centre touches the emptied voxel, which lies on the border.
        apply(&mut cup, &[PostStep::FillHoles {}]);
        assert_eq!(cup.data[centre], 0);
    }

    #[test]
    fn small_components_are_dropped() {
        let mut g = grid([4, 4, 4], &[[0, 0, 0], [3, 3, 3], [3, 3, 2], [3, 2, 2]]);
        apply(&mut g, &[PostStep::MinComponentVoxels { voxels: 2 }]);
        assert_eq!(g.data.iter().filter(|v| **v == 1).count(), 3);
        assert_eq!(g.data[0], 0);
    }
}
