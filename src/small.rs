//! [`Small`]: a list that holds one element inline and allocates only for
//! more. Most requests name one region and one memory segment, so their
//! lists cost no allocation.

use std::ops::{Deref, DerefMut};

#[derive(Debug)]
pub enum Small<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for Small<T> {
    fn default() -> Self {
        Small::Many(Vec::new())
    }
}

impl<T> Small<T> {
    /// Appends `x`: the first element stays inline, a second moves both to a `Vec`.
    pub fn push(&mut self, x: T) {
        match self {
            // The first element (most lists): written in place.
            Small::Many(v) if v.is_empty() => *self = Small::One(x),
            Small::Many(v) => v.push(x),
            Small::One(_) => {
                let Small::One(first) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                *self = Small::Many(vec![first, x]);
            }
        }
    }
}

impl<T> From<Vec<T>> for Small<T> {
    fn from(mut v: Vec<T>) -> Self {
        if v.len() == 1 {
            Small::One(v.pop().expect("one element"))
        } else {
            Small::Many(v)
        }
    }
}

impl<T> FromIterator<T> for Small<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        let mut it = it.into_iter();
        let Some(first) = it.next() else {
            return Small::default();
        };
        match it.next() {
            None => Small::One(first),
            Some(second) => {
                let mut v = Vec::with_capacity(2 + it.size_hint().0);
                v.push(first);
                v.push(second);
                v.extend(it);
                Small::Many(v)
            }
        }
    }
}

impl<T> Deref for Small<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Small::One(x) => std::slice::from_ref(x),
            Small::Many(v) => v,
        }
    }
}

impl<T> DerefMut for Small<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Small::One(x) => std::slice::from_mut(x),
            Small::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Small;

    #[test]
    fn one_inline_many_in_a_vec() {
        let none: Small<u32> = std::iter::empty().collect();
        assert!(none.is_empty());
        let one: Small<u32> = std::iter::once(7).collect();
        assert!(matches!(one, Small::One(7)));
        assert_eq!(&*one, &[7]);
        let mut three: Small<u32> = (1..=3).collect();
        three[1] = 9;
        assert_eq!(&*three, &[1, 9, 3]);
        assert!(matches!(Small::from(vec![5]), Small::One(5)));
        assert_eq!(&*Small::from(vec![1, 2]), &[1, 2]);
        let mut pushed = Small::default();
        pushed.push(1u32);
        assert!(matches!(pushed, Small::One(1)));
        pushed.push(2);
        pushed.push(3);
        assert_eq!(&*pushed, &[1, 2, 3]);
    }
}
