//! Subscription ids interned per shard: each distinct id string gets a small number and
//! its JSON encoding is made once.
//!
//! Owned by one shard. Clients of one application tend to reuse the same ids, so most
//! connections reached by a publication share one `subscriptionIds` list; numbering the
//! ids lets the shard key its per-publication frame cache by a few integers and write the
//! ids without escaping them again.

use std::rc::Rc;

use hashbrown::HashMap;

struct Slot {
    name: Rc<str>,
    json: Box<[u8]>,
    refs: u32,
}

/// Reference-counted id table.
#[derive(Default)]
pub struct Interner {
    by_name: HashMap<Rc<str>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
}

impl Interner {
    /// The number of `name`, taking one reference.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            if let Some(Some(s)) = self.slots.get_mut(id as usize) {
                s.refs += 1;
            }
            return id;
        }
        let name: Rc<str> = name.into();
        let mut json = Vec::with_capacity(name.len() + 2);
        crate::protocol::write_json_str(&mut json, &name);
        let slot = Slot {
            name: name.clone(),
            json: json.into(),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_name.insert(name, id);
        id
    }

    /// The number of `name` if interned, without taking a reference.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Gives back one reference; the id is freed at zero.
    pub fn release(&mut self, id: u32) {
        let Some(Some(s)) = self.slots.get_mut(id as usize) else {
            return;
        };
        s.refs -= 1;
        if s.refs == 0 {
            let name = s.name.clone();
            self.by_name.remove(&*name);
            self.slots[id as usize] = None;
            self.free.push(id);
        }
    }

    pub fn name(&self, id: u32) -> &str {
        match self.slots.get(id as usize) {
            Some(Some(s)) => &s.name,
            _ => "",
        }
    }

    /// The id as a JSON string literal.
    pub fn json(&self, id: u32) -> &[u8] {
        match self.slots.get(id as usize) {
            Some(Some(s)) => &s.json,
            _ => b"\"\"",
        }
    }

    /// Distinct ids held.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_and_reuse() {
        let mut i = Interner::default();
        let a = i.intern("a\"b");
        assert_eq!(i.intern("a\"b"), a);
        assert_eq!(i.json(a), br#""a\"b""#);
        let c = i.intern("c");
        i.release(a);
        assert_eq!(i.lookup("a\"b"), Some(a));
        i.release(a);
        assert_eq!(i.lookup("a\"b"), None);
        assert_eq!(i.len(), 1);
        // The freed number is reused.
        assert_eq!(i.intern("d"), a);
        assert_eq!(i.name(c), "c");
    }
}
